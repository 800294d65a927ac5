"""How an attempt of an agent ends early: a failure (transient or permanent) or a stop."""

from __future__ import annotations

from typing import Any


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
