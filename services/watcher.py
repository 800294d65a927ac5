"""One thread that looks after many watched things, each when it is due: a running job's
lease, cancel flag and deadline (job_watch.Watch). A thread per job cost every job a
thread's start and join, two handovers of the GIL each, though most jobs end before the
first look."""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


class Watched(Protocol):
    def check(self) -> float:
        """Look once; the `time.monotonic()` at which to look next."""
        ...


class Watcher:
    """Calls each added thing's `check` when it is due, from one daemon thread started at
    the first `add` (so in a pool process, after the fork, never in the parent).

    `tick_s`, the soonest any first look comes after its `add`: with nothing to watch, the
    thread looks again after a tick rather than waiting to be woken, so that adds need not
    wake it. Short jobs come and go between its looks; waking it for each cost a handover
    of the GIL per job, only for it to find the job gone. After `IDLE_TICKS` ticks in a row
    with nothing watched and nothing added it sleeps until the next add wakes it."""

    IDLE_TICKS = 20

    def __init__(self, name: str, tick_s: float) -> None:
        self._name = name
        self._tick_s = tick_s
        self._start_afresh()

    def _start_afresh(self) -> None:
        # Also in a forked child, which has none of the parent's threads: it starts its own
        # when it needs one.
        self._changed = threading.Condition()
        self._due: dict[Watched, float] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the thread's wait ends by itself (inf: when notified)
        self._empty_ticks = 0

    def add(self, watched: Watched, first_at: float) -> None:
        with self._changed:
            self._due[watched] = first_at
            # Ticks count from the last add: a job that came and went between two looks
            # still means more may come. (Counted only at the looks, a stream of short jobs
            # kept the thread asleep, and each job woke it: a third of the adds of echo jobs.)
            self._empty_ticks = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if first_at < self._wakes_at:  # else its own wait ends in time
                self._changed.notify()

    def remove(self, watched: Watched) -> None:
        """Stop looking; a look already under way may still finish."""
        with self._changed:
            self._due.pop(watched, None)

    def _run(self) -> None:
        while True:
            due = self._wait_for_due()
            for watched in due:
                try:
                    next_at = watched.check()
                except Exception:  # one watch's bug must not end the others'
                    log.exception("watcher.check_failed", watcher=self._name)
                    next_at = time.monotonic() + 1.0
                with self._changed:
                    if watched in self._due:  # not removed meanwhile
                        self._due[watched] = next_at

    def _wait_for_due(self) -> list[Watched]:
        with self._changed:
            while True:
                now = time.monotonic()
                due = [w for w, at in self._due.items() if at <= now]
                if due:
                    self._wakes_at = 0.0  # busy looking: an add need not wake it
                    return due
                if self._due:  # the earliest look of those still watched
                    self._empty_ticks = 0
                    self._wakes_at = min(self._due.values())
                elif self._empty_ticks < self.IDLE_TICKS:
                    self._empty_ticks += 1
                    self._wakes_at = now + self._tick_s
                else:
                    self._wakes_at = math.inf
                self._changed.wait(None if self._wakes_at == math.inf else self._wakes_at - now)


def watcher(name: str, tick_s: float) -> Watcher:
    """A process-wide watcher that a forked child starts afresh."""
    made = Watcher(name, tick_s)
    os.register_at_fork(after_in_child=made._start_afresh)
    return made
