"""Fault 5: PostgreSQL restarts while jobs run.

The shared server must never be restarted, so this test runs on a cluster of its own
(initdb in a temp directory, a free port). While the database is down every API call
answers 503 with a problem document; once it is back, every job ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.faults.support import (
    FAST,
    assert_unavailable,
    audit_exactly_once,
    wait_all_ended,
)
from tests.helpers import PASSWORD
from tests.stack import PostgresCluster, Reply, stack_on

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

JOBS = 12
DELAY_MS = 1000
# Longer than a lease (JOB_LEASE_S=2): running attempts lose theirs while the database is away.
OUTAGE_S = 3.0
SSE = {"Accept": "text/event-stream"}


def test_jobs_end_after_a_postgres_restart(
    servers: Servers,
    worker_id: str,
    tmp_path: Path,
    cluster: PostgresCluster,
    report: Callable[..., None],
) -> None:
    with stack_on(
        servers,
        worker_id,
        tmp_path,
        "pgrestart",
        admin_database_url=cluster.admin_url,
        **FAST,
    ) as scenario:
        stack, db = scenario.stack, scenario.db
        api = stack.start_web()
        stack.start_worker(concurrency=2)
        stack.start_beat()
        with stack.logs_on_failure():
            api.sign_up()
            owner = db.user_id(api.email)
            agent_id = api.create_echo_agent(delay_ms=DELAY_MS)
            job_ids = [api.submit(agent_id, f"job {n}").body["id"] for n in range(JOBS)]
            stack.within(
                30,
                lambda: len(db.job_ids(owner, "running")) >= 2,
                "jobs never ran in parallel",
            )
            at_stop = db.status_counts(owner)

            cluster.stop("fast")  # disconnects every client
            down_at = time.monotonic()
            calls: list[Callable[[], Reply]] = [
                lambda: api.get(f"/v1/jobs/{job_ids[0]}"),
                lambda: api.get("/v1/jobs"),
                lambda: api.get(f"/v1/jobs/{job_ids[-1]}/events"),
                lambda: api.try_submit(agent_id, "while the database is down"),
                lambda: api.try_submit(agent_id, "keyed", **{"Idempotency-Key": "down-1"}),
                lambda: api.post(f"/v1/jobs/{job_ids[-1]}/cancel"),
                lambda: api.try_create_echo_agent(delay_ms=0),
                lambda: api.get("/readyz"),
                # A live tail read first inside its body: a 500, logged as a 200.
                lambda: api.get("/v1/events", headers=SSE, timeout=5),
                lambda: api.get("/v1/streams/s/events", headers=SSE, timeout=5),
                lambda: api.get(f"/v1/jobs/{job_ids[0]}/events", headers=SSE, timeout=5),
            ]
            # Once only: the auth endpoints are rate-limited per address.
            login = {"email": api.email, "password": PASSWORD}
            answers: list[Reply] = [api.post("/v1/auth/login", login)]

            def outage_observed() -> bool:
                stack.assert_running()
                for call in calls:
                    answers.append(call())
                return time.monotonic() - down_at >= OUTAGE_S

            stack.within(30, outage_observed, "the API did not answer while PostgreSQL was down")
            for reply in answers:
                assert_unavailable(reply)

            cluster.start()
            up_at = time.monotonic()
            stack.within(30, lambda: api.get("/v1/jobs").status == 200, "the API did not recover")
            api_back_at = time.monotonic()
            ended_at = wait_all_ended(stack, db, owner, JOBS)

            statuses = db.status_counts(owner)
            counts = audit_exactly_once(db, owner, JOBS)
            stack.assert_no_server_errors()
            report(
                "5 postgres restart",
                submitted=JOBS,
                at_stop=at_stop,
                outage_s=up_at - down_at,
                calls_while_down=len(answers),
                answers_503=sum(r.status == 503 for r in answers),
                ended=statuses,
                **{k: v for k, v in counts.items() if k not in ("jobs", "succeeded")},
                api_back_after_s=api_back_at - up_at,
                all_ended_after_back_s=ended_at - up_at,
            )
