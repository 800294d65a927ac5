"""Fault 4, the web process dying between commit and publish, and the lifecycle paths that
need real workers: cancelling a running job, and automatic retries of transient failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Servers
from tests.faults.support import FAST, audit_exactly_once
from tests.ports import free_port
from tests.stack import Api, Scenario, stack_on

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

CANCEL_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def running(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Scenario, Api]]:
    """web, worker and beat with fast sweeps, shared by this module's tests."""
    workdir = tmp_path_factory.mktemp("faults-lifecycle")
    with stack_on(servers, worker_id, workdir, "lifecycle", **FAST) as scenario:
        api = scenario.stack.start_web()
        scenario.stack.start_worker(concurrency=2)
        scenario.stack.start_beat()
        yield scenario, api


def _fresh_user(api: Api) -> Api:
    """Another user on the same server: each test counts only its own jobs."""
    user = api.with_base(api.base_url)
    user.sign_up()
    return user


def test_web_dies_between_commit_and_publish(
    running: tuple[Scenario, Api], report: Callable[..., None]
) -> None:
    """The job row is committed, the process exits before its Celery message is sent, and
    the client sees a dropped connection. The sweeper publishes the job; it runs once."""
    scenario, shared = running
    stack, db = scenario.stack, scenario.db
    with stack.logs_on_failure():
        api = _fresh_user(shared)
        owner = db.user_id(api.email)
        agent_id = api.create_echo_agent(delay_ms=0)
        faulty = stack.start_web(
            "web-faulty",
            PORT=str(free_port()),
            FAULT_INJECTION="exit_before_publish",
            WEB_CONCURRENCY="1",
        )
        try:
            crashed_at = time.monotonic()
            with pytest.raises(OSError):  # RemoteDisconnected / ConnectionResetError
                api.with_base(faulty.base_url).try_submit(agent_id, "committed, not published")
            [job_id] = db.attempts(owner)  # the row was committed
            stack.within(
                10,
                lambda: stack.log_count("web-faulty", "exited with code 17"),
                "the faulty web worker did not exit",
            )
        finally:
            stack.kill("web-faulty")

        job = api.wait_terminal(str(job_id))
        ended_at = time.monotonic()

        assert job["status"] == "succeeded", job
        assert job["output"] == {"text": "committed, not published"}
        assert job["attempt"] == 1
        assert [t for _, t in api.event_types(str(job_id))] == [
            "job.queued",
            "job.started",
            "job.succeeded",
        ]
        counts = audit_exactly_once(db, owner, 1)
        stack.assert_no_server_errors()
        report(
            "4 web dies between commit and publish",
            submitted=1,
            rows=counts["jobs"],
            succeeded=counts["succeeded"],
            double_succeeded=counts["double_succeeded"],
            recovery_s=ended_at - crashed_at,
        )


def test_cancel_a_running_job(running: tuple[Scenario, Api], report: Callable[..., None]) -> None:
    scenario, shared = running
    stack, db = scenario.stack, scenario.db
    with stack.logs_on_failure():
        api = _fresh_user(shared)
        owner = db.user_id(api.email)
        agent_id = api.create_echo_agent(delay_ms=10_000)
        job_id = api.submit(agent_id, "long").body["id"]
        stack.within(20, lambda: db.job_ids(owner, "running"), "the job never started")

        asked_at = time.monotonic()
        reply = api.post(f"/v1/jobs/{job_id}/cancel")
        assert reply.status == 200, reply
        assert reply.body["status"] in ("running", "cancelled"), reply
        job = api.wait_terminal(job_id, timeout=15)
        elapsed = time.monotonic() - asked_at

        assert job["status"] == "cancelled", job
        assert [t for _, t in api.event_types(job_id)] == [
            "job.queued",
            "job.started",
            "job.cancel_requested",
            "job.cancelled",
        ]
        again = api.post(f"/v1/jobs/{job_id}/cancel")
        assert again.status == 409, again
        stack.assert_no_server_errors()
        report("6a cancel a running job", cancelled_after_s=elapsed)
        assert elapsed < CANCEL_WITHIN_S + 1.0, f"cancelled after {elapsed:.2f} s"


def test_transient_failures_are_retried(
    running: tuple[Scenario, Api], report: Callable[..., None]
) -> None:
    scenario, shared = running
    stack, db = scenario.stack, scenario.db
    with stack.logs_on_failure():
        api = _fresh_user(shared)
        owner = db.user_id(api.email)
        agent_id = api.create_echo_agent(delay_ms=0, transient_failures=2)
        submitted_at = time.monotonic()
        job_id = api.submit(agent_id, "third time lucky").body["id"]
        job = api.wait_terminal(job_id)
        elapsed = time.monotonic() - submitted_at

        assert job["status"] == "succeeded", job
        assert job["attempt"] == 3, job
        assert job["output"] == {"text": "third time lucky"}
        assert job["error"] is None, job
        assert [t for _, t in api.event_types(job_id)] == [
            "job.queued",
            "job.started",
            "job.retry_scheduled",
            "job.started",
            "job.retry_scheduled",
            "job.started",
            "job.succeeded",
        ]
        assert db.attempts_with_two_endings(owner) == []
        stack.assert_no_server_errors()
        report("6b transient failures retried", attempts=job["attempt"], ended_after_s=elapsed)
