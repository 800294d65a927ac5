"""Runs one attempt of an agent configuration on a job's input.

Only the built-in `echo` provider exists so far. Errors are sorted into transient (worth
another attempt) and permanent (the same input will fail the same way).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Simulated work is bounded so a typo in params cannot park a worker for hours.
MAX_ECHO_DELAY_MS = 60_000


class AgentError(Exception):
    """A failure of the attempt, with a message fit to show to the job's owner."""

    transient = False

    def as_error(self) -> dict[str, Any]:
        return {"type": "transient" if self.transient else "permanent", "message": str(self)}


class PermanentAgentError(AgentError):
    transient = False


class TransientAgentError(AgentError):
    transient = True


def run(
    config: dict[str, Any],
    job_input: dict[str, Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The output of one attempt; raises `AgentError` when the attempt fails."""
    provider = config.get("provider")
    if provider == "echo":
        return _echo(config.get("params") or {}, job_input, sleep)
    raise PermanentAgentError(f"provider {provider!r} is not available on this server")


def _echo(
    params: dict[str, Any], job_input: dict[str, Any], sleep: Callable[[float], None]
) -> dict[str, Any]:
    delay_ms = params.get("delay_ms", 0)
    if not isinstance(delay_ms, int | float) or not 0 <= delay_ms <= MAX_ECHO_DELAY_MS:
        raise PermanentAgentError(f"params.delay_ms must be between 0 and {MAX_ECHO_DELAY_MS}")
    if params.get("fail"):
        # Lets clients and tests exercise the failure path without a real provider.
        raise PermanentAgentError(str(params.get("fail")))
    if delay_ms:
        sleep(delay_ms / 1000)
    if "text" in job_input and set(job_input) <= {"text", "documents"}:
        return {"text": job_input["text"]}
    return dict(job_input)
