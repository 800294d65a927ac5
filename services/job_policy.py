"""The limits and timings that govern jobs, set once from settings by the composition root."""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.errors import FieldProblem, InvalidInput


@dataclass(frozen=True)
class JobPolicy:
    default_timeout_s: int = 300
    max_timeout_s: int = 3600
    default_queue_timeout_s: int = 3600
    max_queue_timeout_s: int = 7 * 86_400
    default_max_attempts: int = 3
    max_queue_depth: int = 10_000
    # A running job's lease; the worker renews it every third of this.
    lease_s: int = 30
    # Between Celery's soft time limit (the runner is interrupted) and its hard one (the
    # process is killed), and between a cancel request and forcing the job to `cancelled`.
    grace_s: int = 5
    # How often a running job looks for a cancel request; "stops within about a second".
    cancel_poll_s: float = 0.5
    republish_after_s: int = 10
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3

    def backoff_s(self, attempt: int, *, at_least: float = 0.0) -> float:
        """Exponential backoff with full jitter between half and all of the step."""
        step = min(self.retry_max_s, self.retry_base_s * 2 ** max(0, attempt - 1))
        return float(max(at_least, step * random.uniform(0.5, 1.0)))


def check_seconds(name: str, value: int | None, limit: int) -> None:
    """422 on `name` when `value` passes `limit`, a deployment's maximum (its schema has
    the setting's value as `maximum`: api.spec_parts.SETTINGS_MAXIMA)."""
    if value is not None and value > limit:
        raise InvalidInput(problems=[FieldProblem(name, f"at most {limit} seconds")])
