"""The long-poll waiter and the process notifier against a real Redis."""

import threading
import time
import uuid

import pytest
import redis

from api.job_waiter import wait_until_terminal
from api.notifier import Busy, Notifier
from services.after_commit import job_channel
from tests.helpers import poll


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def notifier(client):
    notifier = Notifier(client, slots=2)
    # Start the listener and wait until it is subscribed, so no announcement is missed.
    with notifier.watch(str(uuid.uuid4())):
        poll(notifier.connected.is_set, timeout=5)
    yield notifier
    notifier.close()


def test_waiter_wakes_on_announcement(client, notifier):
    job_id = uuid.uuid4()
    state = {"status": "running"}
    reads = []

    def read():
        reads.append(time.monotonic())
        return {"id": job_id, "status": state["status"]}

    def finish():
        state["status"] = "succeeded"
        client.publish(job_channel(job_id), "succeeded")

    timer = threading.Timer(0.2, finish)
    started = time.monotonic()
    timer.start()
    job = wait_until_terminal(notifier, job_id, read, wait_s=10)
    timer.join()
    assert job["status"] == "succeeded"
    # Woken by the message, well before the 10 s limit, with a bounded number of reads.
    assert time.monotonic() - started < 5
    assert len(reads) <= 4


def test_waiter_gives_up_at_the_deadline(notifier):
    job = {"status": "queued"}
    started = time.monotonic()
    assert (
        wait_until_terminal(notifier, uuid.uuid4(), lambda: job, wait_s=0.3)["status"] == "queued"
    )
    assert 0.25 <= time.monotonic() - started < 2


def test_waiter_does_not_wait_for_terminal_jobs(notifier):
    job = {"status": "failed"}
    started = time.monotonic()
    assert wait_until_terminal(notifier, uuid.uuid4(), lambda: job, wait_s=10)["status"] == "failed"
    assert time.monotonic() - started < 0.5


def test_waiters_beyond_the_slots_are_answered_at_once(notifier):
    job = {"status": "queued"}
    with notifier.watch(str(uuid.uuid4())), notifier.watch(str(uuid.uuid4())):
        with pytest.raises(Busy), notifier.watch(str(uuid.uuid4())):
            pass
        started = time.monotonic()
        assert wait_until_terminal(notifier, uuid.uuid4(), lambda: job, wait_s=10) is job
        assert time.monotonic() - started < 0.5
    # Slots come back when the waiters leave.
    with notifier.watch(str(uuid.uuid4())):
        pass
