"""The Procfile's worker runs `WORKER_CONCURRENCY` pool processes, two per usable core when unset
(workers.celery_app.default_worker_concurrency): the setting must reach Celery's pool, not
only its configuration object."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.conftest import Servers
from tests.stack import procfile_command, stack_on
from workers.celery_app import usable_cpus

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("setting", "processes"),
    [("3", 3), (None, 2 * usable_cpus())],
    ids=["set", "unset"],
)
def test_the_worker_runs_as_many_pool_processes_as_configured(
    servers: Servers, worker_id: str, tmp_path: Path, setting: str | None, processes: int
) -> None:
    with stack_on(servers, worker_id, tmp_path, "pool") as scenario:
        stack = scenario.stack
        stack.env.pop("WORKER_CONCURRENCY", None)
        env = {"WORKER_CONCURRENCY": setting} if setting is not None else {}
        stack.start("worker", procfile_command("worker"), **env)
        with stack.logs_on_failure():
            stack.within(60, lambda: stack.log_count("worker", "ready.") > 0, "worker not ready")
            pool = psutil.Process(stack.processes["worker"].pid).children()
            assert len(pool) == processes, [p.cmdline() for p in pool]


def test_a_pool_process_past_its_memory_limit_is_replaced_after_its_task(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """WORKER_MAX_MEMORY_PER_CHILD_MB reaches billiard: with 1 MiB every pool process is
    past it, so each job is answered and then its process replaced, and nothing is lost."""
    with stack_on(servers, worker_id, tmp_path, "maxmem") as scenario:
        stack = scenario.stack
        api = stack.start_web()
        stack.start_worker(concurrency=1, WORKER_MAX_MEMORY_PER_CHILD_MB="1")
        with stack.logs_on_failure():
            api.sign_up()
            agent_id = api.create_echo_agent(delay_ms=0)
            worker = psutil.Process(stack.processes["worker"].pid)

            def pool_pid() -> int | None:
                children = worker.children()
                return children[0].pid if len(children) == 1 else None

            seen = set()
            for n in range(3):
                stack.within(30, lambda: pool_pid() not in seen | {None}, "no new pool process")
                seen.add(pool_pid())
                job = api.wait_terminal(api.submit(agent_id, f"job {n}").body["id"])
                assert job["status"] == "succeeded", job
            assert len(seen) == 3
