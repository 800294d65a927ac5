"""The long-poll waiter against a real Redis: it wakes on an announcement, not a timer."""

import threading
import time
import uuid
from types import SimpleNamespace

import redis

from api.job_waiter import wait_until_terminal
from services.after_commit import job_channel


def test_waiter_wakes_on_announcement(redis_url):
    client = redis.Redis.from_url(redis_url)
    job_id = uuid.uuid4()
    state = {"status": "running"}
    reads = []

    def read():
        reads.append(time.monotonic())
        return SimpleNamespace(id=job_id, status=state["status"])

    def finish():
        state["status"] = "succeeded"
        client.publish(job_channel(job_id), "succeeded")

    timer = threading.Timer(0.2, finish)
    started = time.monotonic()
    timer.start()
    job = wait_until_terminal(client, job_id, read, wait_s=10)
    timer.join()
    assert job.status == "succeeded"
    # Woken by the message, well before the 10 s limit, with a bounded number of reads.
    assert time.monotonic() - started < 5
    assert len(reads) <= 4


def test_waiter_gives_up_at_the_deadline(redis_url):
    client = redis.Redis.from_url(redis_url)
    job = SimpleNamespace(status="queued")
    started = time.monotonic()
    assert wait_until_terminal(client, uuid.uuid4(), lambda: job, wait_s=0.3).status == "queued"
    assert 0.25 <= time.monotonic() - started < 2


def test_waiter_does_not_wait_for_terminal_jobs(redis_url):
    client = redis.Redis.from_url(redis_url)
    job = SimpleNamespace(status="failed")
    started = time.monotonic()
    assert wait_until_terminal(client, uuid.uuid4(), lambda: job, wait_s=10).status == "failed"
    assert time.monotonic() - started < 0.5
