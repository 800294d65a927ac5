from celery import shared_task

from services import jobs
from tasks.deps import deps_of


@shared_task(
    name="conveyor.maintenance.sweep_jobs",
    queue="maintenance",
    bind=True,
    ignore_result=True,
    # A sweep that cannot finish before the next one starts is simply skipped.
    expires=30,
)
def sweep_jobs(self) -> int:
    """Re-publish jobs whose message may have been lost; fail those out of attempts."""
    deps = deps_of(self)
    with deps.session_factory.begin() as session:
        failed = jobs.fail_abandoned(session)
        republished = jobs.republish_stale(session, older_than_s=deps.job_republish_after_s)
    return len(failed) + len(republished)
