"""What one echo job costs a worker process, measured in-process: CPU time, or instructions.

The task runs as a worker's pool process runs it (`tasks.jobs.run_job`, on the `workers`
composition root: claim, run, finish, the announcements and counters its commits set off),
one job at a time, on a scratch database and a private Redis, with the heap frozen as the
worker freezes it before forking. Celery's own per-message work (receive, acknowledge,
task events) is left out: the celery ceiling of `make bench` is that part.

`--instructions` counts with callgrind (bench/callgrind.py): repeatable to a few per cent
where the bench's rows drift by tens. PostgreSQL's and Redis's own work is in neither figure.

Run: `.venv/bin/python -m bench.job_cost [--instructions]` (DATABASE_URL: the server to
create the scratch database on, default local; valgrind for `--instructions`).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from bench import callgrind

JOBS = 1000  # per timed run
COUNTED_JOBS = 50  # callgrind's N
_TIMED = "JOB_COST_TIMED"
# Copies of one submitted job, queued in one statement: setting up N jobs costs this
# process next to nothing, so the counted difference is the jobs' own.
_QUEUE_COPIES = """
    INSERT INTO jobs (id, owner_id, agent_id, agent_version, agent_config, status, input,
                      attempt, max_attempts, attempt_budget, timeout_s, metadata)
    SELECT gen_random_uuid(), owner_id, agent_id, agent_version, agent_config, 'queued', input,
           0, max_attempts, attempt_budget, timeout_s, metadata
    FROM jobs, generate_series(1, %(n)s) WHERE id = %(template)s
    RETURNING id::text
    """


def main(argv: list[str]) -> None:
    # The work runs in a child process: the worker's composition root reads DATABASE_URL
    # and REDIS_URL as it is imported, which this process did before they were known.
    counted = callgrind.child_count()
    if counted is not None:  # one run under callgrind, set up by its parent
        _run(counted, reps=1)
        return
    if os.environ.get(_TIMED):
        _run(JOBS, reps=3)
        return
    with callgrind.scratch_servers("conveyor_jobcost") as scratch:
        servers = {**scratch, "LOG_LEVEL": "INFO"}
        if "--instructions" in argv:
            per_job = callgrind.per_operation("bench.job_cost", [], servers, COUNTED_JOBS)
            print(f"echo job: {per_job:>12,.0f} instructions/job", flush=True)
        else:
            command = [sys.executable, "-m", "bench.job_cost"]
            subprocess.run(command, env={**os.environ, **servers, _TIMED: "1"}, check=True)


def _run(n: int, reps: int) -> None:
    import workers
    from services.log_config import configure_logging
    from tasks.jobs import run_job

    report, sys.stdout = sys.stdout, open(os.devnull, "w")  # noqa: SIM115 (the job log)
    configure_logging(workers.settings.log_level)  # a worker logs each job, as in production
    template = _submitted_job(workers.celery.conveyor.session_factory)
    warm = _queued(workers.engine, template, 5)
    for job_id in warm:
        run_job(job_id)
    gc.collect()
    gc.freeze()
    best = float("inf")
    try:
        for _ in range(reps):
            job_ids = _queued(workers.engine, template, n)
            started = time.process_time()
            statuses = [run_job(job_id) for job_id in job_ids]
            best = min(best, (time.process_time() - started) / n)
            if set(statuses) != {"succeeded"}:
                raise RuntimeError(f"jobs ended {set(statuses)}, not all succeeded")
    finally:
        sys.stdout = report
    if callgrind.child_count() is None:
        print(f"echo job: {best * 1000:8.3f} ms CPU/job", flush=True)


def _submitted_job(session_factory: Any) -> uuid.UUID:
    from services import agents, jobs, users
    from services.job_policy import JobPolicy
    from services.passwords import Passwords

    with session_factory.begin() as session:
        owner = users.register(
            session, email=f"cost-{uuid.uuid4().hex[:8]}@example.com", password="p" * 12,
            passwords=Passwords(time_cost=1, memory_kib=1024),
        ).id  # fmt: skip
        fields = {"name": "echo", "provider": "echo", "model": "echo"}
        agent = agents.create(session, owner_id=owner, fields=fields)
        job = jobs.submit(
            session, owner_id=owner, agent_id=agent.id, input={"text": "hi"}, policy=JobPolicy()
        )
        return job.id


def _queued(engine: Any, template: uuid.UUID, n: int) -> list[str]:
    with engine.begin() as connection:
        driver = connection.connection.driver_connection
        return [row[0] for row in driver.execute(_QUEUE_COPIES, {"n": n, "template": template})]


if __name__ == "__main__":
    main(sys.argv[1:])
