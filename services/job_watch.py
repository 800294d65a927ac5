"""The runner's `RunControl` for one attempt, fed by the process's watcher thread
(services.watcher), which renews the lease, looks for a cancel request and watches the
deadline while the runner works, and tells the runner to stop through it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from services import job_transitions
from services.agent_runner import Stopped
from services.job_policy import JobPolicy
from services.job_transitions import Claim, Heartbeat
from services.job_units import ANNOUNCE_RUNNING_WITHIN_S, Units, in_transaction
from services.watcher import watcher

log = structlog.get_logger(__name__)
# Watches every attempt this process runs (Celery's prefork pool: one at a time); no first
# look comes sooner than the announcement's.
WATCHER = watcher("job-watcher", tick_s=ANNOUNCE_RUNNING_WITHIN_S)


class Watch:
    """The runner's `RunControl`, fed by the process's watcher thread, which renews the
    lease and looks for a cancel request in the database while the runner works."""

    def __init__(self, units: Units, claim: Claim, policy: JobPolicy):
        self.attempt = claim.attempt
        self.job_id = claim.job_id
        self.owner_id = claim.owner_id
        self.correlation_id = claim.correlation_id
        self._aborts: list[Callable[[], None]] = []
        self._units = units
        self._factory = units.session
        self._claim = claim
        self._policy = policy
        now = time.monotonic()
        self._deadline = now + claim.timeout_s
        self._next_beat = now + policy.heartbeat_s
        self._next_db_look = self._next_look(now)
        self._stop = threading.Event()
        self._done = threading.Event()
        self.reason: str | None = None

    def __enter__(self) -> Watch:
        WATCHER.add(self, min(time.monotonic() + ANNOUNCE_RUNNING_WITHIN_S, self._next_db_look))
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        WATCHER.remove(self)

    # RunControl ---------------------------------------------------------------------
    def checkpoint(self) -> None:
        if time.monotonic() >= self._deadline:
            self._halt("timed_out")
        if self._stop.is_set():
            raise Stopped(self.reason or "cancelled")

    def sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while (remaining := until - time.monotonic()) > 0:
            self._stop.wait(min(remaining, max(0.0, self._deadline - time.monotonic()) + 0.001))
            self.checkpoint()

    def remaining_s(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        held = in_transaction(
            self._factory,
            lambda session: job_transitions.progress(session, self._claim, event_type, dict(data)),
        )
        if not held:
            self._halt("lost")
            self.checkpoint()

    def on_stop(self, abort: Callable[[], None]) -> None:
        self._aborts.append(abort)
        if self._stop.is_set():
            abort()

    # the watcher thread -------------------------------------------------------------
    def _halt(self, reason: str) -> None:
        if self._done.is_set():  # a look that was under way as the attempt ended
            return
        if self.reason is None:
            self.reason = reason
        already = self._stop.is_set()
        self._stop.set()
        if not already:
            for abort in self._aborts:
                try:
                    abort()  # e.g. close the model's response the runner is blocked on
                except Exception:
                    log.warning("job.abort_failed", job_id=str(self.job_id), exc_info=True)

    def check(self) -> float:
        """One look (services.watcher calls it when due): renew the lease when a heartbeat
        is due, else ask whether a cancel was requested; stop the runner at the deadline."""
        if self._done.is_set():
            return time.monotonic() + self._policy.cancel_poll_s
        try:
            self._units.send_held()  # the job runs on: say so now
            if time.monotonic() < self._next_db_look:
                return self._next_db_look
            if time.monotonic() >= self._next_beat:
                self._next_beat = time.monotonic() + self._policy.heartbeat_s
                with self._factory.begin() as session:
                    beat = job_transitions.heartbeat(session, self._claim, policy=self._policy)
                if beat == Heartbeat.LOST:
                    self._halt("lost")
                elif beat == Heartbeat.CANCEL:
                    self._halt("cancelled")
            else:
                with self._factory() as session:
                    wanted = job_transitions.cancel_requested(session, self._claim)
                if wanted is None:
                    self._halt("lost")
                elif wanted:
                    self._halt("cancelled")
        except Exception:
            # A database hiccup must not stop the watch; the lease has slack for retries.
            log.warning("job.watch_failed", job_id=str(self._claim.job_id), exc_info=True)
        now = time.monotonic()
        if now >= self._deadline:
            self._halt("timed_out")
        self._next_db_look = self._next_look(now)
        return self._next_db_look

    def _next_look(self, now: float) -> float:
        """After the poll interval, or at the deadline if that comes first."""
        next_at = now + self._policy.cancel_poll_s
        return min(next_at, self._deadline) if self._deadline > now else next_at
