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
