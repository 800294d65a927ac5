from enum import StrEnum


class EventType(StrEnum):
    """Domain event types, dotted by the resource they describe."""

    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_TIMED_OUT = "job.timed_out"
    # An attempt failed transiently; the job waits for its backoff, then runs again.
    JOB_RETRY_SCHEDULED = "job.retry_scheduled"
    # The worker running an attempt stopped responding; the job is queued again.
    JOB_REQUEUED = "job.requeued"
    JOB_CANCEL_REQUESTED = "job.cancel_requested"
    # A client asked to run a failed, cancelled or timed-out job again.
    JOB_RETRIED = "job.retried"
    # Progress of an agent run: steps, coalesced output text, tool calls and their results.
    JOB_STEP_STARTED = "job.step.started"
    JOB_STEP_FINISHED = "job.step.finished"
    JOB_OUTPUT_DELTA = "job.output.delta"
    JOB_TOOL_CALL = "job.tool_call"
    JOB_TOOL_RESULT = "job.tool_result"
    # A document's versions: each event's data is the whole state of that version.
    DOCUMENT_CREATED = "document.created"
    DOCUMENT_UPDATED = "document.updated"
    DOCUMENT_DELETED = "document.deleted"


TERMINAL_JOB_EVENTS = frozenset(
    {
        EventType.JOB_SUCCEEDED,
        EventType.JOB_FAILED,
        EventType.JOB_CANCELLED,
        EventType.JOB_TIMED_OUT,
    }
)


def job_stream(job_id: object) -> str:
    return f"job-{job_id}"


def document_stream(document_id: object) -> str:
    return f"document-{document_id}"
