from typing import Any

import structlog
from celery import shared_task

from services import event_batches, job_sweeper, token_revocations
from tasks.deps import deps_of

log = structlog.get_logger(__name__)


@shared_task(
    name="conveyor.maintenance.sweep_jobs",
    queue="maintenance",
    bind=True,
    ignore_result=True,
    # A sweep that cannot start before the next one is due is simply skipped.
    expires=30,
)
def sweep_jobs(self) -> int:
    """End, re-queue or re-publish jobs and event batches whose worker or message was lost."""
    deps = deps_of(self)
    waiting = _queue_length(self.app, "agents")
    with deps.session_factory.begin() as session:
        report = job_sweeper.sweep(session, policy=deps.job_policy, waiting_messages=waiting)
        batches = event_batches.republish_pending(
            session, older_than_s=deps.job_policy.republish_after_s
        )
    if report.total() or batches:
        counts = {k: len(v) for k, v in vars(report).items() if v}
        log.info("swept", event_batches_republished=len(batches), **counts)
    return report.total() + len(batches)


# Rows deleted per run: a day of logouts on a busy server, in one short statement.
REVOCATIONS_PER_SWEEP = 10_000


@shared_task(
    name="conveyor.maintenance.sweep_token_revocations",
    queue="maintenance",
    bind=True,
    ignore_result=True,
    expires=300,
)
def sweep_token_revocations(self) -> int:
    """Delete revocations whose tokens have all expired (at most REVOCATIONS_PER_SWEEP a
    run; the next run goes on), so the table, and the reload of Redis from it, stay small."""
    deps = deps_of(self)
    with deps.session_factory.begin() as session:
        deleted = token_revocations.delete_expired(session, limit=REVOCATIONS_PER_SWEEP)
    if deleted:
        log.info("token_revocations.swept", deleted=deleted)
    return deleted


def _queue_length(app: Any, queue: str) -> int | None:
    """Messages waiting in a broker queue; None when the broker cannot say (then the sweep
    re-publishes every stale job, which is right after a broker restart)."""
    try:
        with app.connection_for_read() as connection:
            _, count, _ = connection.default_channel.queue_declare(queue)
            return int(count)
    except Exception:
        log.warning("sweep.queue_length_unknown", queue=queue, exc_info=True)
        return None
