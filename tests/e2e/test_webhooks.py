"""Webhooks end to end: the Procfile's gunicorn, Celery worker and beat deliver a job's
terminal event to a real receiver on loopback, which verifies every request with the
`standardwebhooks` library; a worker SIGKILLed in the middle of a delivery does not lose it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Servers
from tests.stack import Api, Stack, stack_on
from tests.webhook_receiver import Receiver, answer, hold, receiver

pytestmark = pytest.mark.e2e

FAST = {
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
    "WEBHOOK_TIMEOUT_S": "2",  # a claimed delivery's lease: 2 + 5 s
    "WEBHOOK_REPUBLISH_AFTER_S": "0.5",
    "SWEEP_INTERVAL_S": "0.5",
}
DEADLINE_S = 45.0


def subscribe(api: Api, hook: Receiver) -> dict[str, Any]:
    reply = api.post("/v1/webhooks", {"url": hook.url, "event_types": ["job.succeeded"]})
    assert reply.status == 201, reply
    return dict(reply.body)


def requests_within(stack: Stack, hook: Receiver, count: int) -> list[Any]:
    def arrived() -> list[Any] | None:
        stack.assert_running()
        return list(hook.requests) if len(hook.requests) >= count else None

    return list(stack.within(DEADLINE_S, arrived, f"the receiver did not get {count} requests"))


def delivery_log(api: Api, endpoint_id: str) -> dict[str, Any]:
    reply = api.get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert reply.status == 200, reply
    (delivery,) = reply.body["items"]
    return dict(delivery)


def test_a_job_event_is_delivered_retried_and_verified(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    with receiver() as hook, stack_on(servers, worker_id, tmp_path, "webhooks", **FAST) as sc:
        stack = sc.stack
        api = stack.start_web()
        stack.start_worker()
        with stack.logs_on_failure():
            api.sign_up()
            hook.then(answer(500))  # the first attempt fails; the retry, 0.2 s later, lands
            endpoint = subscribe(api, hook)
            job = api.submit(api.create_echo_agent(delay_ms=0), "hello, hooks").body
            done = api.wait_terminal(job["id"])

            first, second = requests_within(stack, hook, 2)
            assert first.verify(endpoint["secret"]) == second.verify(endpoint["secret"])
            body = second.verify(endpoint["secret"])
            assert body["type"] == "job.succeeded" and body["data"] == done
            assert first.headers["webhook-id"] == second.headers["webhook-id"]
            stack.within(
                10, lambda: delivery_log(api, endpoint["id"])["status"] == "succeeded", "log"
            )
            logged = delivery_log(api, endpoint["id"])
            assert [a["status_code"] for a in logged["attempts"]] == [500, 200]
            assert logged["message_id"] == first.headers["webhook-id"]


def test_a_worker_killed_mid_delivery_still_delivers(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """The worker is SIGKILLed (whole process group) while the receiver holds its request.
    Its message stays unacknowledged in Redis for the visibility timeout (an hour); the
    delivery row's lease runs out instead, beat's sweeper publishes it again, and a new
    worker delivers the same message."""
    with receiver() as hook, stack_on(servers, worker_id, tmp_path, "webhookkill", **FAST) as sc:
        stack = sc.stack
        api = stack.start_web()
        stack.start_worker()
        stack.start_beat()
        with stack.logs_on_failure():
            api.sign_up()
            hook.then(hold())  # the first request waits until the test lets it go
            endpoint = subscribe(api, hook)
            job = api.submit(api.create_echo_agent(delay_ms=0), "survive").body
            api.wait_terminal(job["id"])
            (held,) = requests_within(stack, hook, 1)
            assert delivery_log(api, endpoint["id"])["status"] == "pending"  # in flight

            stack.kill("worker")
            hook.release()  # the dead worker's request gets its answer into a closed socket
            stack.start_worker()

            _, redelivered = requests_within(stack, hook, 2)
            assert redelivered.headers["webhook-id"] == held.headers["webhook-id"]
            assert redelivered.verify(endpoint["secret"])["data"]["id"] == job["id"]
            stack.within(
                10, lambda: delivery_log(api, endpoint["id"])["status"] == "succeeded", "log"
            )
            logged = delivery_log(api, endpoint["id"])
            # Two claims; only the second attempt lived to write its line in the log.
            assert logged["attempt_count"] == 2
            assert [a["status_code"] for a in logged["attempts"]] == [200]
            assert stack.log_count("worker", "webhooks.swept") > 0  # the sweeper did it
