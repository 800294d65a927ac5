"""Webhook deliveries under faults: PostgreSQL restarts while an attempt is in flight.

The receiver answers 200 after the restart; the worker's pooled connections are all dead
by then (the worker's engine does not ping them), and the attempt's outcome must still be
recorded, once, instead of the message going out again when the claim's lease runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.faults.support import FAST
from tests.stack import PostgresCluster, stack_on
from tests.webhook_receiver import hold, receiver

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

WEBHOOKS_FAST = {
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
    "WEBHOOK_TIMEOUT_S": "2",  # a claim's lease: 2 + 5 s
    "WEBHOOK_REPUBLISH_AFTER_S": "0.5",
}


def test_an_answer_during_a_postgres_restart_is_recorded_once(
    servers: Servers,
    worker_id: str,
    tmp_path: Path,
    cluster: PostgresCluster,
    report: Callable[..., None],
) -> None:
    with (
        receiver() as hook,
        stack_on(
            servers,
            worker_id,
            tmp_path,
            "webhookpg",
            admin_database_url=cluster.admin_url,
            **FAST,
            **WEBHOOKS_FAST,
        ) as scenario,
    ):
        stack, db = scenario.stack, scenario.db
        api = stack.start_web()
        stack.start_worker(concurrency=2)
        stack.start_beat()  # its sweeper would send the message again, as it did
        with stack.logs_on_failure():
            api.sign_up()
            hook.then(hold())  # the first request waits for the restart
            reply = api.post("/v1/webhooks", {"url": hook.url, "event_types": ["job.succeeded"]})
            assert reply.status == 201, reply
            api.submit(api.create_echo_agent(delay_ms=0), "hooked")
            stack.within(30, lambda: hook.requests, "the receiver got no request")

            cluster.stop("fast")  # every connection of the worker's pools dies
            cluster.start()
            restarted_at = time.monotonic()
            hook.release()  # 200, now that the database is back

            def ended() -> list[tuple[str, int]] | None:
                stack.assert_running()
                rows = db.rows("SELECT status, attempts FROM webhook_deliveries")
                return rows if rows and rows[0][0] in ("succeeded", "dead") else None

            (delivery,) = stack.within(60, ended, "the delivery never ended")
            ended_at = time.monotonic()
            attempts = db.rows("SELECT status_code FROM webhook_attempts")
            # A delivery that succeeded is never sent again: the count is final.
            requests = len(hook.requests)
            assert delivery == ("succeeded", 1), delivery
            assert attempts == [(200,)], attempts
            assert requests == 1, f"the receiver got the message {requests} times"
            report(
                "webhook answer during a postgres restart",
                requests=requests,
                attempts_logged=len(attempts),
                recorded_after_restart_s=ended_at - restarted_at,
            )
