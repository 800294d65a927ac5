"""Admission control: under overload, answer 503 at once instead of queueing for seconds.

A web process is one CPU-bound Python interpreter. Past a few requests at a time, more of
them in progress only makes each one slower, and a request that has already waited long
behind others is one its client has probably given up on. So each process admits at most
`slots` requests into the application at once; a request that cannot get a slot within
`max_wait_s` of arriving — counted from when gunicorn queued its connection for a thread
(api/server_worker.py), not from when a thread picked it up — gets a 503 problem with
`Retry-After` before any authentication, database or Redis work.

How long a request may wait depends on whether the process is *behind*: busy is fine
(every slot taken, a few requests waiting their turn, as a closed loop of clients that
saturates the CPU keeps it), behind is not (at least `behind_queue` requests waiting,
which only more offered work than the process serves produces). While busy, a request may
wait `max_wait_s`, so a slow moment of the machine sheds nobody; while behind, only
`behind_wait_s`, so those admitted are answered promptly and the rest are told at once to
come back, instead of all of them waiting out the long budget.

Requests that wait on something other than the CPU (long-polls, SSE tails) give their slot
back when they start waiting (`leave`, called by `request_context.end_session`). Health,
readiness and metrics are never held back: a probe must not read overload as death.
"""

from __future__ import annotations

import queue
import threading
import time

from flask import Flask, g, request

from services.errors import Overloaded

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 1
DETAIL = "the server is at capacity; retry shortly"

_arrival = threading.local()
_queued = 0  # requests the server has queued for a thread that no thread has taken yet
_queued_lock = threading.Lock()


def mark_queued() -> None:
    """Called by the server when it queues a request for a thread."""
    global _queued
    with _queued_lock:
        _queued += 1


def mark_arrival(monotonic_s: float | None) -> None:
    """Called by the server in the thread about to run a request it queued: when the
    request arrived (None: unknown; the wait then counts from when the application sees
    it)."""
    global _queued
    with _queued_lock:
        _queued = max(0, _queued - 1)
    _arrival.at = monotonic_s


def _arrived_at() -> float:
    at: float | None = getattr(_arrival, "at", None)
    _arrival.at = None  # one request per mark; a server that never marks counts from now
    return at if at is not None else time.monotonic()


class Admission:
    def __init__(
        self, *, slots: int, max_wait_s: float, behind_wait_s: float, behind_queue: int
    ) -> None:
        # The free slots, as tokens in a queue: C code, where a semaphore's acquire and
        # release go through a Python Condition (every request takes and gives back one).
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(slots):
            self._slots.put(None)
        self._behind_queue = behind_queue
        self._waiting = 0  # requests in threads, waiting for a slot
        self._lock = threading.Lock()
        self.max_wait_s = max_wait_s
        self.behind_wait_s = min(behind_wait_s, max_wait_s)

    def behind(self) -> bool:
        """At least `behind_queue` requests wait, for a thread or a slot."""
        return _queued + self._waiting >= self._behind_queue

    def enter(self) -> None:
        """Take a slot for this request, or raise Overloaded. A request the server has
        already admitted (`admit`) takes over the slot the server took for it."""
        if getattr(_arrival, "slot", None) is self:
            _arrival.slot = None
        elif not self._take():
            raise Overloaded(DETAIL, retry_after_s=RETRY_AFTER_S)
        g.admission_slot = self

    def admit(self) -> bool:
        """The server's own check, in the thread about to run a request, before the WSGI
        environment and the application: a slot taken within the request's budget (True),
        or none (False), and the server answers 503 itself, from bytes made once. Under
        overload most requests end here, so a refusal must cost next to nothing: one made
        by the application cost a third of an accepted submit and starved the accepted
        ones. The slot passes to the application's `enter`; `release_unclaimed` gives it
        back when the application never took it (a request that failed before its hooks)."""
        if not self._take():
            return False
        _arrival.slot = self
        return True

    def release_unclaimed(self) -> None:
        if getattr(_arrival, "slot", None) is self:
            _arrival.slot = None
            self._slots.put(None)

    def _take(self) -> bool:
        waited = time.monotonic() - _arrived_at()
        left = (self.behind_wait_s if self.behind() else self.max_wait_s) - waited
        return left > 0 and self._acquire(left)

    def _acquire(self, timeout_s: float) -> bool:
        try:
            self._slots.get_nowait()
            return True
        except queue.Empty:
            pass
        with self._lock:
            self._waiting += 1
        try:
            self._slots.get(timeout=timeout_s)
            return True
        except queue.Empty:
            return False
        finally:
            with self._lock:
                self._waiting -= 1

    @staticmethod
    def leave() -> None:
        """Give this request's slot back (idempotent)."""
        admission: Admission | None = g.pop("admission_slot", None)
        if admission is not None:
            admission._slots.put(None)


def install(
    app: Flask, *, slots: int, max_wait_s: float, behind_wait_s: float, behind_queue: int
) -> Admission:
    """Register before the other `before_request` hooks that do real work (auth, limits)."""
    admission = Admission(
        slots=slots,
        max_wait_s=max_wait_s,
        behind_wait_s=behind_wait_s,
        behind_queue=behind_queue,
    )

    @app.before_request
    def _admit() -> None:
        if request.path not in EXEMPT_PATHS:
            admission.enter()

    app.teardown_request(lambda _error: Admission.leave())
    app.extensions["conveyor.admission"] = admission
    _installed[:] = [admission]
    return admission


_installed: list[Admission] = []  # the process's one application's (`installed()`)


def installed() -> Admission | None:
    """The admission control of this process's application, for the server."""
    return _installed[0] if _installed else None
