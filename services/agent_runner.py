"""Runs one attempt of an agent configuration on a job's input.

The built-in `echo` provider runs here; OpenAI-compatible providers run in `chat_runner`.
Errors are sorted into transient (worth
another attempt) and permanent (the same input will fail the same way). A runner calls
`control.checkpoint()` between steps and sleeps through `control.sleep`, so a cancel or a
timeout stops it within about a second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from services.agent_errors import (
    AgentError,
    PermanentAgentError,
    Stopped,
    TransientAgentError,
)
from services.agent_params import MAX_ECHO_DELAY_MS

__all__ = ["AgentError", "PermanentAgentError", "RunControl", "Stopped", "TransientAgentError"]


class RunControl(Protocol):
    """What a runner gets from the worker running it."""

    attempt: int
    job_id: uuid.UUID
    owner_id: uuid.UUID
    # The job's (its submit's request id): what the attempt writes carries it too.
    correlation_id: str | None

    def checkpoint(self) -> None:
        """Raise `Stopped` when the attempt must end."""

    def sleep(self, seconds: float) -> None:
        """Wait, but raise `Stopped` as soon as the attempt must end."""

    def remaining_s(self) -> float:
        """Seconds left before the attempt's deadline."""

    def emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Append a progress event to the job's stream, in a short transaction of its own;
        raises `Stopped` when this attempt no longer holds the job."""

    def on_stop(self, abort: Callable[[], None]) -> None:
        """Call `abort` (from another thread) as soon as the attempt must stop, e.g. to close
        a model response the runner is blocked reading."""


class FreeRun:
    """Control for running outside a worker (scripts, unit tests): never stops, records
    what would have been emitted."""

    attempt = 1
    job_id = uuid.UUID(int=0)
    owner_id = uuid.UUID(int=0)
    correlation_id: str | None = None

    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, Any]]] = []

    def checkpoint(self) -> None:
        return None

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def remaining_s(self) -> float:
        return 3600.0

    def emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        self.emitted.append((event_type, dict(data)))

    def on_stop(self, abort: Callable[[], None]) -> None:
        return None


Chat = Callable[[dict[str, Any], dict[str, Any], RunControl], dict[str, Any]]


class AgentRunner:
    """Runs the built-in `echo` provider itself and every other provider through `chat`
    (an OpenAI-compatible chat runner), when the process has one."""

    def __init__(self, chat: Chat | None = None) -> None:
        self._chat = chat

    def __call__(
        self, config: dict[str, Any], job_input: dict[str, Any], *, control: RunControl
    ) -> dict[str, Any]:
        provider = config.get("provider")
        if provider == "echo":
            return _echo(config.get("params") or {}, job_input, control)
        if self._chat is None:
            raise PermanentAgentError(f"provider {provider!r} is not available on this server")
        return self._chat(config, job_input, control)


def run(
    config: dict[str, Any], job_input: dict[str, Any], *, control: RunControl | None = None
) -> dict[str, Any]:
    """One attempt with the built-in providers only; raises `AgentError` when it fails."""
    return AgentRunner()(config, job_input, control=control or FreeRun())


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
