"""What watches running attempts: one thread per process (services.watcher) looks after
every attempt's cancel flag, lease and deadline, each when it is due."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from services import job_execution
from services.after_commit import Announce
from services.job_policy import JobPolicy
from services.watcher import Watcher
from tests.helpers import poll
from tests.job_worker import Worker

QUICK = JobPolicy(cancel_poll_s=0.05, lease_s=3600)


@pytest.fixture
def worker(database_url: str):  # type: ignore[no-untyped-def]
    worker = Worker(database_url, pool_size=4)
    yield worker
    worker.engine.dispose()


def waits_until_stopped(_config: Any, _input: Any, *, control: Any) -> dict[str, Any]:
    """A runner blocked on something only an abort ends (a model's response, say)."""
    released = threading.Event()
    control.on_stop(released.set)
    released.wait(30)
    control.checkpoint()  # raises Stopped with the watch's reason
    return {"text": "not stopped"}


def _run_in_thread(worker: Worker, job_id: uuid.UUID) -> list[str | None]:
    ended: list[str | None] = []
    runner = waits_until_stopped
    threading.Thread(
        target=lambda: ended.append(
            job_execution.execute(
                worker.sessions, job_id, policy=QUICK, runner=runner,
                single_statement=worker.one_statement,
            )
        ),
        daemon=True,
    ).start()  # fmt: skip
    return ended


def _request_cancel(worker: Worker, job_id: uuid.UUID) -> None:
    with worker.engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET cancel_requested_at = now() WHERE id = :id"), {"id": job_id}
        )


def test_running_attempts_in_one_process_each_stop_when_their_cancel_is_asked(worker):
    first, second = worker.queued_job(), worker.queued_job()
    ended_first, ended_second = _run_in_thread(worker, first), _run_in_thread(worker, second)
    poll(lambda: worker.job(first).status == "running" and worker.job(second).status == "running")
    _request_cancel(worker, second)
    assert poll(lambda: ended_second) == ["cancelled"]
    assert not ended_first and worker.job(first).status == "running"
    _request_cancel(worker, first)
    assert poll(lambda: ended_first) == ["cancelled"]


def test_an_attempt_is_stopped_at_its_deadline(worker):
    job_id = worker.queued_job(timeout_s=1)
    started = time.monotonic()
    ended = _run_in_thread(worker, job_id)
    assert poll(lambda: ended, timeout=10) == ["timed_out"]
    # at the deadline itself, not at a later poll: within the second plus a poll or two
    assert time.monotonic() - started < 1 + 5 * QUICK.cancel_poll_s + 1
    assert worker.job(job_id).status == "timed_out"


class Counting:
    def __init__(self, every_s: float, fails: bool = False) -> None:
        self.looks = 0
        self.every_s = every_s
        self.fails = fails

    def check(self) -> float:
        self.looks += 1
        if self.fails:
            raise RuntimeError("a bug in one watch")
        return time.monotonic() + self.every_s


def test_the_watcher_looks_at_each_when_due_and_survives_a_failing_one():
    watcher = Watcher("test-watcher", tick_s=0.01)
    failing, often, removed = Counting(0.01, fails=True), Counting(0.01), Counting(0.01)
    for watched in (failing, often, removed):
        watcher.add(watched, time.monotonic())
    poll(lambda: often.looks >= 3 and removed.looks >= 1 and failing.looks >= 1)
    watcher.remove(removed)
    looks_when_removed = removed.looks
    poll(lambda: often.looks >= looks_when_removed + 10)
    assert removed.looks <= looks_when_removed + 1  # at most the look under way
    assert failing.looks == 1  # after a failure, looked at again only a second later
    for watched in (failing, often):
        watcher.remove(watched)


def test_a_job_that_runs_on_is_announced_as_running_before_it_ends(worker):
    job_id = worker.queued_job()
    ended = _run_in_thread(worker, job_id)
    running = Announce(f"job:{job_id}", "running")
    poll(lambda: running in worker.dispatched, timeout=5)
    assert not ended and worker.job(job_id).status == "running"
    _request_cancel(worker, job_id)
    assert poll(lambda: ended) == ["cancelled"]
    assert worker.dispatched.count(running) == 1


def test_short_watches_after_an_idle_spell_wake_the_watcher_once():
    """Jobs that end before the watcher's next look, arriving every few milliseconds after
    the watcher fell asleep: the first wakes it, and it ticks again instead of sleeping
    until the next one wakes it (that was a wake-up, and a GIL handover, per job)."""
    import math

    watcher = Watcher("test-idle", tick_s=0.005)
    first = Counting(1.0)
    watcher.add(first, time.monotonic() + 1.0)
    watcher.remove(first)
    poll(lambda: watcher._wakes_at == math.inf)  # asleep until an add wakes it
    wakes = []
    notify = watcher._changed.notify
    watcher._changed.notify = lambda n=1: (wakes.append(n), notify(n))  # type: ignore[method-assign]
    for _ in range(30):
        short = Counting(1.0)
        watcher.add(short, time.monotonic() + 1.0)  # ends long before its first look
        watcher.remove(short)
        time.sleep(0.003)  # the next job comes 3 ms later
    assert len(wakes) <= 3, len(wakes)
