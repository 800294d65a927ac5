"""Runs one attempt of an agent configuration on a job's input.

Only the built-in `echo` provider exists so far. Errors are sorted into transient (worth
another attempt) and permanent (the same input will fail the same way). A runner calls
`control.checkpoint()` between steps and sleeps through `control.sleep`, so a cancel or a
timeout stops it within about a second.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

# Simulated work is bounded so a typo in params cannot park a worker for hours.
MAX_ECHO_DELAY_MS = 600_000


class AgentError(Exception):
    """A failure of the attempt, with a message fit to show to the job's owner."""

    transient = False

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def as_error(self) -> dict[str, Any]:
        return {"type": "transient" if self.transient else "permanent", "message": str(self)}


class PermanentAgentError(AgentError):
    transient = False


class TransientAgentError(AgentError):
    transient = True


class Stopped(Exception):
    """The attempt must stop now: `reason` is `cancelled`, `timed_out` or `lost`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RunControl(Protocol):
    attempt: int

    def checkpoint(self) -> None:
        """Raise `Stopped` when the attempt must end."""

    def sleep(self, seconds: float) -> None:
        """Wait, but raise `Stopped` as soon as the attempt must end."""


class FreeRun:
    """Control for running outside a worker (tests, scripts): never stops, really sleeps."""

    attempt = 1

    def checkpoint(self) -> None:
        return None

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def run(
    config: dict[str, Any], job_input: dict[str, Any], *, control: RunControl | None = None
) -> dict[str, Any]:
    """The output of one attempt; raises `AgentError` when the attempt fails."""
    control = control or FreeRun()
    provider = config.get("provider")
    if provider == "echo":
        return _echo(config.get("params") or {}, job_input, control)
    raise PermanentAgentError(f"provider {provider!r} is not available on this server")


def _echo(params: dict[str, Any], job_input: dict[str, Any], control: RunControl) -> dict[str, Any]:
    delay_ms = params.get("delay_ms", 0)
    if not isinstance(delay_ms, int | float) or not 0 <= delay_ms <= MAX_ECHO_DELAY_MS:
        raise PermanentAgentError(f"params.delay_ms must be between 0 and {MAX_ECHO_DELAY_MS}")
    # These let clients and tests exercise failure paths without a real provider.
    if params.get("fail"):
        raise PermanentAgentError(str(params["fail"]))
    transient_failures = params.get("transient_failures", 0)
    if isinstance(transient_failures, int) and control.attempt <= transient_failures:
        raise TransientAgentError(
            f"simulated transient failure on attempt {control.attempt}", retry_after_s=0
        )
    control.checkpoint()
    if delay_ms:
        control.sleep(delay_ms / 1000)
    if "text" in job_input and set(job_input) <= {"text", "documents"}:
        return {"text": job_input["text"]}
    return dict(job_input)
