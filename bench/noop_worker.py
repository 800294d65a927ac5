"""The Celery ceiling's app: the production Celery configuration (`make_celery`: queues,
acks_late, prefetch 1, events, broker options) with one bare task that does nothing.

Started with the Procfile's worker command line, `-A workers` replaced by
`-A bench.noop_worker`, so pool, concurrency, queues and flags are the production ones; only
the app's own per-task work (database, runner, log context, metrics) is absent. Bench code
only: the production app knows nothing of it.
"""

from __future__ import annotations

import os

from workers.celery_app import make_celery

NOOP_TASK = "bench.noop"

app = make_celery(
    broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    # The production worker's count (settings.worker_concurrency), read the same way.
    worker_concurrency=int(os.environ.get("WORKER_CONCURRENCY") or 0) or None,
    max_memory_per_child_mb=int(os.environ.get("WORKER_MAX_MEMORY_PER_CHILD_MB") or 300),
)
app.conf.include = []  # the production task modules are not needed to do nothing
celery = app


@app.task(name=NOOP_TASK, queue="agents", ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    return None
