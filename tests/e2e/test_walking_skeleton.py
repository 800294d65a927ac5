"""The walking skeleton with real processes: the Procfile's gunicorn, Celery worker and beat
against real PostgreSQL and Redis, driven over HTTP with nothing but the standard library.

Each scenario gets a migrated database and a Redis server of its own, so its worker
consumes only its own queues. The process management lives in `tests/stack.py`, shared
with the fault tests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import Servers
from tests.helpers import poll
from tests.stack import Api, Stack, stack_on

pytestmark = pytest.mark.e2e

QUEUED_STARTED_SUCCEEDED = [(1, "job.queued"), (2, "job.started"), (3, "job.succeeded")]


@pytest.fixture(scope="module")
def running(
    servers: Servers, worker_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Api]]:
    """web and worker, shared by the tests that only submit and read jobs."""
    workdir = tmp_path_factory.mktemp("e2e-skeleton")
    with stack_on(servers, worker_id, workdir, "skeleton") as scenario:
        stack = scenario.stack
        api = stack.start_web()
        stack.start_worker()
        api.sign_up()
        yield stack, api


# --------------------------------------------------------------------------- tests


def test_submit_run_and_read_a_job(running: tuple[Stack, Api]) -> None:
    stack, api = running
    with stack.logs_on_failure():
        agent_id = api.create_echo_agent(delay_ms=50)
        request_id = f"e2e-{uuid.uuid4().hex}"
        submitted = api.submit(agent_id, "hello", **{"X-Request-ID": request_id})
        assert submitted.body["status"] == "queued"
        assert submitted.headers.get("X-Request-ID") == request_id
        job_id = submitted.body["id"]

        job = api.wait_terminal(job_id)

        assert job["status"] == "succeeded", job
        assert job["output"] == {"text": "hello"}
        assert job["error"] is None
        assert job["attempt"] == 1
        assert job["started_at"] is not None
        assert job["finished_at"] is not None
        reply = api.get(f"/v1/jobs/{job_id}/events")
        assert reply.status == 200, reply
        events = reply.body["items"]
        assert [(e["version"], e["type"]) for e in events] == QUEUED_STARTED_SUCCEEDED
        positions = [e["position"] for e in events]
        assert positions == sorted(positions)
        assert {e["stream"] for e in events} == {f"job-{job_id}"}
        # The request id travels through the broker to the worker's events.
        assert [e["metadata"].get("correlation_id") for e in events] == [request_id] * 3
        assert events[2]["data"]["output"] == {"text": "hello"}


def test_long_poll_answers_when_the_job_ends(running: tuple[Stack, Api]) -> None:
    stack, api = running
    with stack.logs_on_failure():
        # The agent works for a second, so the job cannot have ended before we ask.
        agent_id = api.create_echo_agent(delay_ms=1000)
        job_id = api.submit(agent_id, "patience").body["id"]

        started = time.monotonic()
        reply = api.get(f"/v1/jobs/{job_id}?wait=10", timeout=20)
        elapsed = time.monotonic() - started

        assert reply.status == 200, reply
        assert reply.body["status"] == "succeeded", reply.body
        assert reply.body["output"] == {"text": "patience"}
        # Woken by the job's end, not by the end of the wait.
        assert elapsed < 8, f"the long poll took {elapsed:.1f} s"


def test_a_lost_message_is_republished_by_the_sweeper(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """The job's message vanishes from Redis before any worker sees it; beat's sweeper
    publishes it again and the job runs, once."""
    fast_sweeps = {"JOB_REPUBLISH_AFTER_S": "1", "SWEEP_INTERVAL_S": "0.5"}
    with stack_on(servers, worker_id, tmp_path, "lost", **fast_sweeps) as scenario:
        stack = scenario.stack
        api = stack.start_web()  # no worker yet: the message stays in Redis
        with stack.logs_on_failure():
            api.sign_up()
            agent_id = api.create_echo_agent(delay_ms=50)
            job_id = api.submit(agent_id, "found again").body["id"]

            broker = redis.Redis.from_url(stack.env["REDIS_URL"])
            try:
                # The web publishes after answering (workers/publisher.py): wait for it.
                messages = poll(
                    lambda: [json.loads(m) for m in broker.lrange("agents", 0, -1)] or None
                )
                assert [m["headers"]["task"] for m in messages] == ["conveyor.jobs.run"]
                assert job_id in messages[0]["headers"]["argsrepr"]
                assert broker.delete("agents") == 1
            finally:
                broker.close()

            stack.start_worker()
            stack.start_beat()
            job = api.wait_terminal(job_id)

            assert job["status"] == "succeeded", job
            assert job["output"] == {"text": "found again"}
            assert job["attempt"] == 1
            assert api.event_types(job_id) == QUEUED_STARTED_SUCCEEDED
            # Beat keeps its schedule where BEAT_SCHEDULE_FILE says (shelve adds suffixes).
            assert list(stack.workdir.glob("beat-schedule*"))
