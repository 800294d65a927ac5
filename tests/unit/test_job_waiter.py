"""The long-poll waiter and the process notifier against a real Redis."""

import threading
import time
import uuid

import pytest
import redis

from api.disconnect import CHECK_S
from api.job_waiter import wait_until_terminal
from api.notifier import Busy, Notifier
from services.after_commit import job_channel
from telemetry import prometheus
from tests import prom
from tests.helpers import poll


def stays():
    return False


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
    job = wait_until_terminal(notifier, job_id, read, wait_s=10, gone=stays)
    timer.join()
    assert job["status"] == "succeeded"
    # Woken by the message, well before the 10 s limit, with a bounded number of reads.
    assert time.monotonic() - started < 5
    assert len(reads) <= 4


def test_a_change_announced_before_the_subscription_holds_wakes_the_waiter(redis_url):
    """The first waiter of a process starts the listener. A change announced before the
    listener's subscription held reached nobody, and the waiter, finding the notifier
    connected by then, slept out its whole wait (as after every resubscription). Here the
    listener subscribes only once the change has been announced."""
    let_go = threading.Event()

    class SubscribesWhenLetGo(redis.Redis):
        def pubsub(self, **kwargs):  # type: ignore[no-untyped-def]
            let_go.wait(5)
            return super().pubsub(**kwargs)

    client = SubscribesWhenLetGo.from_url(redis_url)
    notifier = Notifier(client, slots=1)
    job_id = uuid.uuid4()
    reads = []

    def read():
        reads.append(time.monotonic())
        if len(reads) > 2:
            return {"id": job_id, "status": "succeeded"}
        if len(reads) == 2:
            # The waiter's read under watch; the job ends right after it, before the
            # listener's subscription holds.
            client.publish(job_channel(job_id), "succeeded")
            let_go.set()
            poll(notifier.connected.is_set, timeout=5)
        return {"id": job_id, "status": "running"}

    started = time.monotonic()
    try:
        job = wait_until_terminal(notifier, job_id, read, wait_s=10, gone=stays)
    finally:
        let_go.set()
        notifier.close()
    assert job["status"] == "succeeded"
    assert time.monotonic() - started < 5


def test_waiter_gives_up_at_the_deadline(notifier):
    job = {"status": "queued"}
    started = time.monotonic()
    answer = wait_until_terminal(notifier, uuid.uuid4(), lambda: job, wait_s=0.3, gone=stays)
    assert answer["status"] == "queued"
    assert 0.25 <= time.monotonic() - started < 2


def test_waiter_does_not_wait_for_terminal_jobs(notifier):
    job = {"status": "failed"}
    started = time.monotonic()
    answer = wait_until_terminal(notifier, uuid.uuid4(), lambda: job, wait_s=10, gone=stays)
    assert answer["status"] == "failed"
    assert time.monotonic() - started < 0.5


def test_waiters_beyond_the_slots_are_answered_at_once(notifier):
    job = {"status": "queued"}
    with notifier.watch(str(uuid.uuid4())), notifier.watch(str(uuid.uuid4())):
        with pytest.raises(Busy), notifier.watch(str(uuid.uuid4())):
            pass
        started = time.monotonic()
        answer = wait_until_terminal(notifier, uuid.uuid4(), lambda: job, wait_s=10, gone=stays)
        assert answer is job
        assert time.monotonic() - started < 0.5
    # Slots come back when the waiters leave.
    with notifier.watch(str(uuid.uuid4())):
        pass


def test_a_waiter_whose_client_has_gone_gives_its_slot_back_within_a_check(notifier):
    """The route passes a look at the socket (api/disconnect.py); here, a client that goes
    away 0.2 s into a 10 s wait."""
    job = {"status": "queued"}
    started = time.monotonic()
    gone_at = started + 0.2
    answer = wait_until_terminal(
        notifier, uuid.uuid4(), lambda: job, wait_s=10, gone=lambda: time.monotonic() > gone_at
    )
    assert answer is job
    assert time.monotonic() - started < 0.2 + CHECK_S + 1
    with notifier.watch(str(uuid.uuid4())), notifier.watch(str(uuid.uuid4())):
        pass  # both slots free again


def test_waiting_requests_and_refusals_are_on_the_metrics(notifier):
    def sample(name):
        return prom.value(prom.parse(prometheus.exposition().decode()), name)

    waiting, refused = sample("conveyor_waiting_requests"), sample("conveyor_waiting_refused_total")
    with notifier.watch(str(uuid.uuid4())), notifier.watch(str(uuid.uuid4())):
        assert sample("conveyor_waiting_requests") == waiting + 2
        with pytest.raises(Busy), notifier.watch(str(uuid.uuid4())):
            pass
    assert sample("conveyor_waiting_requests") == waiting
    assert sample("conveyor_waiting_refused_total") == refused + 1
