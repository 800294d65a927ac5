"""Admission control: under overload, answer 503 at once instead of queueing for seconds.

A web process is one CPU-bound Python interpreter. Past a few requests at a time, more of
them in progress only makes each one slower, and a request that has already waited long
behind others is one its client has probably given up on. So each process admits at most
`slots` requests into the application at once; a request that cannot get a slot within
`max_wait_s` of arriving — counted from when gunicorn queued its connection for a thread
(api/server_worker.py), not from when a thread picked it up — gets a 503 problem with
`Retry-After` before any authentication, database or Redis work.

Requests that wait on something other than the CPU (long-polls, SSE tails) give their slot
back when they start waiting (`leave`, called by `request_context.end_session`). Health,
readiness and metrics are never held back: a probe must not read overload as death.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, g, request

from services.errors import Overloaded

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 1

_arrival = threading.local()


def mark_arrival(monotonic_s: float | None) -> None:
    """Called by the server in the thread about to run the request: when it arrived
    (None: unknown; the wait then counts from when the application sees it)."""
    _arrival.at = monotonic_s


def _arrived_at() -> float:
    at: float | None = getattr(_arrival, "at", None)
    _arrival.at = None  # one request per mark; a server that never marks counts from now
    return at if at is not None else time.monotonic()


class Admission:
    def __init__(self, *, slots: int, max_wait_s: float) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self.max_wait_s = max_wait_s

    def enter(self) -> None:
        """Take a slot for this request, or raise Overloaded."""
        waited = time.monotonic() - _arrived_at()
        left = self.max_wait_s - waited
        if left <= 0 or not self._slots.acquire(timeout=left):
            raise Overloaded(
                "the server is at capacity; retry shortly", retry_after_s=RETRY_AFTER_S
            )
        g.admission_slot = self

    @staticmethod
    def leave() -> None:
        """Give this request's slot back (idempotent)."""
        admission: Admission | None = g.pop("admission_slot", None)
        if admission is not None:
            admission._slots.release()


def install(app: Flask, *, slots: int, max_wait_s: float) -> Admission:
    """Register before the other `before_request` hooks that do real work (auth, limits)."""
    admission = Admission(slots=slots, max_wait_s=max_wait_s)

    @app.before_request
    def _admit() -> None:
        if request.path not in EXEMPT_PATHS:
            admission.enter()

    app.teardown_request(lambda _error: Admission.leave())
    app.extensions["conveyor.admission"] = admission
    return admission
