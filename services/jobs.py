"""Jobs as clients see them: submit, read, list, cancel, retry.

Transitions made by workers and the sweeper live in `job_transitions` and `job_sweeper`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models import TERMINAL_STATUSES, Agent, Event, Job
from models.db import UnitOfWork, fetch_one_on_driver
from models.ids import new_id
from services import agents, documents, event_store, job_events, job_view, metrics, ssrf
from services.errors import Conflict, FieldProblem, InvalidInput, NotFound, Overloaded
from services.event_types import EventType, job_stream
from services.job_policy import JobPolicy, check_seconds
from services.job_transitions import end_jobs, waits_anew
from services.pagination import ByteBound, Page, newest_first
from services.webhook_policy import Network

RETRYABLE_STATUSES = ("failed", "cancelled", "timed_out")

_AGENT_CONFIG = ", ".join(f"'{name}', a.{name}" for name in agents.CONFIG_FIELDS)
# Only constants are formatted into this statement; every value is a bound parameter, in
# psycopg's style: it goes to the driver as written (models.db.fetch_one_on_driver).
_SUBMIT = f"""
    WITH job AS (
        INSERT INTO jobs (
            id, owner_id, agent_id, agent_version, agent_config, status, input, attempt,
            max_attempts, attempt_budget, timeout_s, queue_timeout_s, queue_deadline_at,
            webhook_url, metadata, correlation_id
        )
        SELECT %(job_id)s, a.owner_id, a.id, a.version, jsonb_build_object({_AGENT_CONFIG}),
               'queued', %(input)s::jsonb, 0, %(max_attempts)s, %(max_attempts)s,
               least(coalesce(%(timeout_s)s, a.timeout_s, %(default_timeout_s)s),
                     %(max_timeout_s)s),
               %(queue_timeout_s)s,
               now() + make_interval(secs => %(queue_timeout_s)s), %(webhook_url)s,
               %(metadata)s::jsonb, %(correlation_id)s
        FROM agents AS a
        WHERE a.id = %(agent_id)s AND a.owner_id = %(owner_id)s AND a.deleted_at IS NULL
        RETURNING *
    ), queued AS (
        INSERT INTO events (event_id, owner_id, stream, version, type, data, metadata)
        SELECT %(event_id)s, owner_id, %(stream)s, 1, '{EventType.JOB_QUEUED}',
               jsonb_build_object('job_id', id::text, 'agent_version', agent_version),
               %(event_metadata)s::jsonb
        FROM job
    )
    SELECT {job_view.SELECT_LIST} FROM job
    """  # noqa: S608


def submit(
    session: UnitOfWork,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    input: dict[str, Any],
    policy: JobPolicy,
    queue_depth: Callable[[], int] | None = None,
    webhook_url: str | None = None,
    webhook_networks: Sequence[Network] = (),
    metadata: dict[str, Any] | None = None,
    timeout_s: int | None = None,
    queue_timeout_s: int | None = None,
    max_attempts: int | None = None,
    correlation_id: str | None = None,
) -> job_view.JobRow:
    """Queue a job for the owner's agent; the run message is published after commit.
    The answer is a row of the job's view (job_view.job_json takes it), not a loaded Job."""
    _refuse_when_full(queue_depth, policy)
    if webhook_url is not None:
        try:
            ssrf.check_without_resolving(webhook_url, allowed=webhook_networks)
        except ssrf.UnsafeUrl as refused:
            raise InvalidInput(problems=[FieldProblem("webhook_url", str(refused))]) from None
    _check_documents(session, owner_id, input.get("documents") or [])
    check_seconds("timeout_s", timeout_s, policy.max_timeout_s)
    check_seconds("queue_timeout_s", queue_timeout_s, policy.max_queue_timeout_s)
    attempts = max_attempts or policy.default_max_attempts
    # A default above a lowered maximum gives no more than a job may ask for (the timeout's
    # default is capped in the statement, with the agent's).
    queue_timeout_s = min(
        queue_timeout_s or policy.default_queue_timeout_s, policy.max_queue_timeout_s
    )
    job_id = new_id()
    # The hot path: one round trip reads the agent, inserts the job with a copy of the
    # agent's configuration, and appends `job.queued` as version 1 of the new job's stream.
    row = fetch_one_on_driver(
        session,
        _SUBMIT,
        {
            "job_id": job_id,
            "owner_id": owner_id,
            "agent_id": agent_id,
            "input": orjson.dumps(input).decode(),
            "max_attempts": attempts,
            "timeout_s": timeout_s,
            "default_timeout_s": policy.default_timeout_s,
            # An agent stored before the maximum was lowered, or a default above it, gives
            # its jobs no more than the deployment allows (a request's own was checked).
            "max_timeout_s": policy.max_timeout_s,
            "queue_timeout_s": queue_timeout_s,
            "webhook_url": webhook_url,
            "metadata": orjson.dumps(metadata or {}).decode(),
            "correlation_id": correlation_id,
            "stream": job_stream(job_id),
            "event_id": new_id(),
            "event_metadata": orjson.dumps(
                {"correlation_id": correlation_id} if correlation_id else {}
            ).decode(),
        },
    )
    if row is None:
        raise InvalidInput(problems=[FieldProblem("agent_id", "no agent with this id")])
    job = job_view.JobRow._make(row)
    event_store.appended(session, owner_id, 1)  # job.queued
    job_events.publish_run(session, job.id, timeout_s=job.timeout_s, grace_s=policy.grace_s)
    metrics.count_after_commit(session, metrics.JOBS_SUBMITTED)
    return job


def view(session: UnitOfWork, *, owner_id: uuid.UUID, job_id: uuid.UUID) -> dict[str, Any]:
    """The job as clients see it (job_view.job_json), read without the ORM: `GET
    /v1/jobs/<id>` and every long-poll wake-up come here, straight to the driver
    (models.db.fetch_one_on_driver)."""
    row = fetch_one_on_driver(session, job_view.VIEW, {"job_id": job_id, "owner_id": owner_id})
    if row is None:
        raise NotFound("no job with this id")
    return job_view.job_json(job_view.JobRow._make(row))


def get(session: Session, *, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.owner_id != owner_id:
        raise NotFound("no job with this id")
    return job


def list_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    max_bytes: int,
    status: str | None = None,
    agent_id: uuid.UUID | None = None,
) -> Page[Job]:
    """A page of the owner's jobs, newest first; it ends early after the job whose input,
    output, error and metadata take the page to `max_bytes`."""
    query = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        query = query.where(Job.status == status)
    if agent_id is not None:
        query = query.where(Job.agent_id == agent_id)
    bound = ByteBound(Job, [Job.input, Job.output, Job.error, Job.metadata_], max_bytes)
    return newest_first(session, query, Job.id, limit=limit, cursor=cursor, bounded=bound)


def events_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    from_version: int,
    limit: int,
    max_bytes: int,
) -> tuple[list[Event], bool]:
    """A page of the job's events in version order from `from_version`, bounded by
    `max_bytes` too (event_store.stream_page); and whether more follow it."""
    get(session, owner_id=owner_id, job_id=job_id)
    return event_store.stream_page(
        session,
        owner_id=owner_id,
        stream=job_stream(job_id),
        from_version=from_version,
        limit=limit,
        max_bytes=max_bytes,
    )


def cancel(session: Session, *, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Cancel a queued job at once; ask a running one to stop. 409 for a finished job."""
    queued = (Job.id == job_id) & (Job.owner_id == owner_id) & (Job.status == "queued")

    def cancel_queued() -> list[uuid.UUID]:
        return end_jobs(session, queued, "cancelled", reason="cancelled by the client")

    if cancel_queued():
        return get(session, owner_id=owner_id, job_id=job_id)
    # A queued job too: one queued again (a transient failure, a lost lease) while this
    # waited for its row would run again. Once the request is set, the row is ours.
    requested = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.owner_id == owner_id,
            Job.status.in_(("queued", "running")),
            Job.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=func.now(), updated_at=func.now())
        .returning(Job.status, Job.attempt, Job.correlation_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if requested is not None and requested.status == "queued":
        cancel_queued()
        return get(session, owner_id=owner_id, job_id=job_id)
    if requested is not None:
        job_events.record(
            session,
            owner_id=owner_id,
            job_id=job_id,
            event_type=EventType.JOB_CANCEL_REQUESTED,
            status="running",
            data={"attempt": requested.attempt},
            correlation_id=requested.correlation_id,
        )
    job = get(session, owner_id=owner_id, job_id=job_id)
    if is_terminal(job.status):
        raise Conflict(
            f"the job has already ended ({job.status})", extra={"job_status": job.status}
        )
    return job


def retry(
    session: Session,
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    policy: JobPolicy,
    queue_depth: Callable[[], int] | None = None,
) -> Job:
    """Queue a failed, cancelled or timed-out job again, with a fresh budget of attempts.
    Not when its agent has been deleted since: a deleted agent takes no new work, and a
    retry is new work (it ran again, as the agent was when the job was submitted). Nor into
    a full queue, as a submit."""
    _refuse_when_full(queue_depth, policy)
    agent_live = select(Agent.id).where(Agent.id == Job.agent_id, Agent.deleted_at.is_(None))
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.owner_id == owner_id,
            Job.status.in_(RETRYABLE_STATUSES),
            agent_live.exists(),
        )
        .values(
            status="queued",
            max_attempts=Job.attempt + Job.attempt_budget,
            output=None,
            error=None,
            run_after=None,
            cancel_requested_at=None,
            finished_at=None,
            updated_at=func.now(),
            **waits_anew(func.now()),
        )
        .returning(Job.attempt, Job.timeout_s, Job.correlation_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        job = get(session, owner_id=owner_id, job_id=job_id)
        if job.status in RETRYABLE_STATUSES:
            raise Conflict(
                "the job's agent has been deleted; submit the job to a live agent instead",
                extra={"job_status": job.status},
            )
        raise Conflict(
            f"only failed, cancelled or timed-out jobs can be retried; this one is {job.status}",
            extra={"job_status": job.status},
        )
    job_events.record(
        session,
        owner_id=owner_id,
        job_id=job_id,
        event_type=EventType.JOB_RETRIED,
        status="queued",
        data={"after_attempt": row.attempt},
        correlation_id=row.correlation_id,
    )
    job_events.publish_run(session, job_id, timeout_s=row.timeout_s, grace_s=policy.grace_s)
    return get(session, owner_id=owner_id, job_id=job_id)


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


def _refuse_when_full(queue_depth: Callable[[], int] | None, policy: JobPolicy) -> None:
    """Backpressure on new work (a submit, a retry): 503 while the agents queue is full."""
    if queue_depth is not None and queue_depth() >= policy.max_queue_depth:
        raise Overloaded("the job queue is full; try again shortly", retry_after_s=5)


def _check_documents(unit: UnitOfWork, owner_id: uuid.UUID, named: list[str]) -> None:
    """Documents the input names must be the owner's and live when the job is submitted
    (one may still be deleted before it runs: the model is then told it is unavailable)."""
    if named:
        problems = [
            FieldProblem(f"input.documents.{i}", "no document with this id")
            for i in documents.absent(unit, owner_id=owner_id, document_ids=named)
        ]
        if problems:
            raise InvalidInput(problems=problems)
