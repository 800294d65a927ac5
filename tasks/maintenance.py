import structlog
from celery import shared_task

from services import job_sweeper
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
    """End, re-queue or re-publish jobs whose worker or message was lost."""
    deps = deps_of(self)
    with deps.session_factory.begin() as session:
        report = job_sweeper.sweep(session, policy=deps.job_policy)
    if report.total():
        log.info("jobs.swept", **{k: len(v) for k, v in vars(report).items() if v})
    return report.total()
