import structlog
from celery import shared_task

from services import event_batches, job_sweeper
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
    with deps.session_factory.begin() as session:
        report = job_sweeper.sweep(session, policy=deps.job_policy)
        batches = event_batches.republish_pending(
            session, older_than_s=deps.job_policy.republish_after_s
        )
    if report.total() or batches:
        counts = {k: len(v) for k, v in vars(report).items() if v}
        log.info("swept", event_batches_republished=len(batches), **counts)
    return report.total() + len(batches)
