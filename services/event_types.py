from enum import StrEnum


class EventType(StrEnum):
    """Domain event types, dotted by the resource they describe."""

    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_TIMED_OUT = "job.timed_out"
    JOB_REQUEUED = "job.requeued"


def job_stream(job_id: object) -> str:
    return f"job-{job_id}"
