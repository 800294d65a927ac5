"""Fault 1: the Celery worker is SIGKILLed, whole process group, while jobs run.

Nothing is handed back to the broker (acks_late messages stay unacknowledged in Redis for
the visibility timeout, an hour). The beat sweeper must see the expired leases, queue the
jobs again as a new attempt, and re-publish the ones whose message the dead worker held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.faults.support import FAST, audit_exactly_once, wait_all_ended
from tests.stack import stack_on

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

JOBS = 30
CONCURRENCY = 4
DELAY_MS = 500


def test_jobs_survive_a_sigkilled_worker(
    servers: Servers, worker_id: str, tmp_path: Path, report: Callable[..., None]
) -> None:
    with stack_on(servers, worker_id, tmp_path, "killworker", **FAST) as scenario:
        stack, db = scenario.stack, scenario.db
        api = stack.start_web()
        stack.start_worker(concurrency=CONCURRENCY)
        stack.start_beat()
        with stack.logs_on_failure():
            api.sign_up()
            owner = db.user_id(api.email)
            agent_id = api.create_echo_agent(delay_ms=DELAY_MS)
            for number in range(JOBS):
                api.submit(agent_id, f"job {number}")

            # Mid-flight: every pool process holds a running attempt, and some jobs are done.
            def busy() -> dict[str, int] | None:
                counts = db.status_counts(owner)
                full = counts.get("running", 0) >= CONCURRENCY and counts.get("succeeded", 0)
                return counts if full else None

            stack.within(30, busy, "the worker never ran jobs in parallel")
            killed_at = time.monotonic()
            stack.kill("worker")  # SIGKILL to the group; returns once no member is alive
            at_kill = db.status_counts(owner)
            running_at_kill = set(db.job_ids(owner, "running"))
            assert running_at_kill, at_kill

            stack.start_worker(concurrency=CONCURRENCY)
            ended_at = wait_all_ended(stack, db, owner, JOBS)

            counts = audit_exactly_once(db, owner, JOBS)
            retried = {job_id for job_id, attempt in db.attempts(owner).items() if attempt > 1}
            # Each attempt the kill interrupted was taken over by a new attempt.
            assert running_at_kill <= retried, (running_at_kill, retried)
            stack.assert_no_server_errors()
            report(
                "1 worker SIGKILL",
                submitted=JOBS,
                at_kill=at_kill,
                running_at_kill=len(running_at_kill),
                **counts,
                results_fenced=stack.log_count("worker", "job.result_fenced"),
                recovery_s=ended_at - killed_at,
            )
