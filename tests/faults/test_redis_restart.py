"""Faults 2 and 3: Redis, which keeps nothing, restarts or is down.

Redis only wakes workers; PostgreSQL knows every job. After a restart the queues are
empty, and the beat sweeper re-publishes every queued job from the database. While Redis
is down, a submit either is accepted (202, the job row committed; the sweeper publishes it
later) or refused with a 503 problem document that left nothing behind.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import Servers
from tests.faults.support import (
    FAST,
    REPUBLISH_AFTER_S,
    SWEEP_INTERVAL_S,
    assert_unavailable,
    audit_exactly_once,
    in_parallel,
    wait_all_ended,
)
from tests.stack import Reply, stack_on

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

QUEUED_JOBS = 200
SUBMITS = 50


def test_queued_jobs_survive_a_redis_restart(
    servers: Servers, worker_id: str, tmp_path: Path, report: Callable[..., None]
) -> None:
    with stack_on(servers, worker_id, tmp_path, "redisrestart", **FAST) as scenario:
        stack, db, redis_server = scenario.stack, scenario.db, scenario.redis
        api = stack.start_web()
        stack.start_worker(concurrency=2)
        stack.start_beat()
        broker = redis.Redis.from_url(redis_server.url, socket_timeout=2)
        with stack.logs_on_failure():
            api.sign_up()
            owner = db.user_id(api.email)
            agent_id = api.create_echo_agent(delay_ms=0)
            stack.within(30, lambda: stack.log_count("worker", "ready.") == 1, "worker not ready")
            # A worker that takes nothing: every job waits in Redis, as behind a long backlog.
            stack.signal_group("worker", signal.SIGSTOP)
            replies = in_parallel(
                [lambda n=n: api.submit(agent_id, f"job {n}") for n in range(QUEUED_JOBS)]
            )
            assert all(isinstance(r, Reply) and r.status == 202 for r in replies), replies
            # All of them, but the one a BRPOP may have handed the stopped worker already
            # (the web's publishing thread sends them just after the answers).
            queued_in_redis = stack.within(
                10,
                lambda: (n := broker.llen("agents")) >= QUEUED_JOBS - 1 and n,
                "the run messages never reached Redis",
            )
            assert db.status_counts(owner) == {"queued": QUEUED_JOBS}

            redis_server.restart()  # a new, empty server on the same port
            back_at = time.monotonic()
            back_in_db = db.value("SELECT clock_timestamp()")
            assert broker.llen("agents") == 0
            stack.signal_group("worker", signal.SIGCONT)

            # The sweeper stamps `updated_at` on each job it re-publishes; a claim does too.
            def all_republished() -> bool:
                touched = db.value(
                    "SELECT count(*) FROM jobs WHERE owner_id = %s"
                    " AND (status <> 'queued' OR updated_at > %s)",
                    owner,
                    back_in_db,
                )
                return touched == QUEUED_JOBS

            stack.within(60, all_republished, "the sweeper did not re-publish every job")
            republished_at = time.monotonic()
            ended_at = wait_all_ended(stack, db, owner, QUEUED_JOBS)
            counts = audit_exactly_once(db, owner, QUEUED_JOBS)
            # Messages still waiting although every job has ended: duplicates the sweeper
            # published for jobs that were only waiting their turn.
            stale_messages = broker.llen("agents")
        broker.close()
        stack.assert_no_server_errors()
        report(
            "2 redis restart",
            submitted=QUEUED_JOBS,
            queued_in_redis_before=queued_in_redis,
            **counts,
            # From the worker's log: deliveries that found nothing to claim.
            duplicate_deliveries=stack.log_count("worker", "job.not_claimed"),
            stale_messages_left=stale_messages,
            all_republished_after_back_s=republished_at - back_at,
            all_ended_after_back_s=ended_at - back_at,
            sweep_interval_s=SWEEP_INTERVAL_S,
            republish_after_s=REPUBLISH_AFTER_S,
        )
        # The sweeper re-published within two sweeps, plus the worker's reconnection.
        assert republished_at - back_at < 2 * SWEEP_INTERVAL_S + 15


def test_submits_while_redis_is_down(
    servers: Servers, worker_id: str, tmp_path: Path, report: Callable[..., None]
) -> None:
    with stack_on(servers, worker_id, tmp_path, "redisdown", **FAST) as scenario:
        stack, db, redis_server = scenario.stack, scenario.db, scenario.redis
        api = stack.start_web()
        stack.start_worker(concurrency=2)
        stack.start_beat()
        with stack.logs_on_failure():
            api.sign_up()
            owner = db.user_id(api.email)
            agent_id = api.create_echo_agent(delay_ms=0)

            # A: Redis is down for the whole burst.
            redis_server.stop()
            down = in_parallel(
                [lambda n=n: api.try_submit(agent_id, f"a{n}") for n in range(SUBMITS)]
            )
            redis_server.start()
            # B: Redis goes down in the middle of a burst.
            answered = threading.Semaphore(0)

            def submit(n: int) -> Reply:
                try:
                    return api.try_submit(agent_id, f"b{n}")
                finally:
                    answered.release()

            def stop_midway() -> None:
                for _ in range(SUBMITS // 5):
                    answered.acquire()
                redis_server.stop()

            stopper = threading.Thread(target=stop_midway)
            stopper.start()
            midway = in_parallel([lambda n=n: submit(n) for n in range(SUBMITS)], threads=4)
            stopper.join()
            redis_server.start()
            back_at = time.monotonic()

            outcomes = {}
            for phase, replies in (("down", down), ("midway", midway)):
                assert all(isinstance(r, Reply) for r in replies), replies
                for reply in replies:
                    if reply.status != 202:
                        assert_unavailable(reply)
                outcomes[phase] = {
                    "202": sum(r.status == 202 for r in replies),
                    "503": sum(r.status == 503 for r in replies),
                }
            accepted = outcomes["down"]["202"] + outcomes["midway"]["202"]
            # A refused submit left no row; an accepted one has exactly one.
            assert sum(db.status_counts(owner).values()) == accepted
            ended_at = wait_all_ended(stack, db, owner, accepted)
            counts = audit_exactly_once(db, owner, accepted)
        stack.assert_no_server_errors()
        report(
            "3 submits while redis is down",
            submitted=2 * SUBMITS,
            down=outcomes["down"],
            midway=outcomes["midway"],
            rows=counts["jobs"],
            succeeded=counts["succeeded"],
            double_succeeded=counts["double_succeeded"],
            accepted_but_not_published=stack.log_count(
                "web", "after_commit.dispatch_failed", "SendTask("
            ),
            all_ended_after_back_s=ended_at - back_at,
        )
