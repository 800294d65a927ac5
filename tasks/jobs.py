import uuid

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from services import job_execution
from tasks.deps import deps_of


@shared_task(
    name="conveyor.jobs.run",
    queue="agents",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_job(self, job_id: str) -> str | None:
    """Run one attempt of a job; a second delivery of the same message finds nothing to do.
    The publisher sets per-message time limits from the job's own timeout."""
    deps = deps_of(self)
    return job_execution.execute(
        deps.session_factory,
        uuid.UUID(job_id),
        policy=deps.job_policy,
        runner=deps.runner,
        interrupts=(SoftTimeLimitExceeded,),
        single_statement=deps.single_statement,
    )
