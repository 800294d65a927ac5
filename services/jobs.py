"""Jobs: submit, read, and the guarded status transitions that workers make.

Every transition is one conditional UPDATE, so two processes can never both move a job,
and each appends its event to the job's stream in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models import TERMINAL_STATUSES, Event, Job
from services import agents, event_store
from services.after_commit import JobChanged, SendTask, defer
from services.errors import FieldProblem, InvalidInput, NotFound
from services.event_store import NewEvent
from services.event_types import EventType, job_stream
from services.pagination import Page, decode_cursor, page_of

RUN_JOB_TASK = "conveyor.jobs.run"
AGENTS_QUEUE = "agents"


@dataclass(frozen=True)
class JobLimits:
    default_timeout_s: int
    max_timeout_s: int
    default_max_attempts: int


@dataclass(frozen=True)
class Claim:
    """What a worker needs to run one attempt of a job."""

    job_id: uuid.UUID
    owner_id: uuid.UUID
    attempt: int
    agent_config: dict[str, Any]
    input: dict[str, Any]
    timeout_s: int
    correlation_id: str | None


def submit(
    session: Session,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    input: dict[str, Any],
    limits: JobLimits,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
    timeout_s: int | None = None,
    max_attempts: int | None = None,
    correlation_id: str | None = None,
) -> Job:
    """Queue a job for the owner's agent; the run message is published after commit."""
    try:
        agent = agents.get(session, owner_id=owner_id, agent_id=agent_id)
    except NotFound:
        raise InvalidInput(problems=[FieldProblem("agent_id", "no agent with this id")]) from None
    if timeout_s is not None and timeout_s > limits.max_timeout_s:
        raise InvalidInput(
            problems=[FieldProblem("timeout_s", f"at most {limits.max_timeout_s} seconds")]
        )
    job = Job(
        owner_id=owner_id,
        agent_id=agent.id,
        agent_version=agent.version,
        agent_config=agents.config_of(agent),
        status="queued",
        input=input,
        attempt=0,
        max_attempts=max_attempts or limits.default_max_attempts,
        timeout_s=timeout_s or agent.timeout_s or limits.default_timeout_s,
        webhook_url=webhook_url,
        metadata_=metadata or {},
        correlation_id=correlation_id,
    )
    session.add(job)
    session.flush()
    _append(
        session,
        job.owner_id,
        job.id,
        EventType.JOB_QUEUED,
        {"agent_version": job.agent_version},
        correlation_id,
    )
    defer(session, SendTask(RUN_JOB_TASK, AGENTS_QUEUE, (str(job.id),)))
    return job


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
    status: str | None = None,
    agent_id: uuid.UUID | None = None,
) -> Page[Job]:
    query = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        query = query.where(Job.status == status)
    if agent_id is not None:
        query = query.where(Job.agent_id == agent_id)
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return page_of(rows, limit)


def events(
    session: Session, *, owner_id: uuid.UUID, job_id: uuid.UUID, from_version: int, limit: int
) -> list[Event]:
    get(session, owner_id=owner_id, job_id=job_id)
    return event_store.read_stream(
        session,
        owner_id=owner_id,
        stream=job_stream(job_id),
        from_version=from_version,
        limit=limit,
    )


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES


# --- transitions made by workers -------------------------------------------------------


def claim(session: Session, *, job_id: uuid.UUID, lease_s: int) -> Claim | None:
    """Take a queued job (or one whose worker's lease ran out) for a new attempt.

    None when there is nothing to claim: another delivery of the same message, a job that
    already ended, or a job another worker holds.
    """
    lease_until = func.now() + dt.timedelta(seconds=1) * (Job.timeout_s + lease_s)
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt < Job.max_attempts)
        .where((Job.status == "queued") | _lease_expired())
        .values(
            status="running",
            attempt=Job.attempt + 1,
            lease_expires_at=lease_until,
            started_at=func.coalesce(Job.started_at, func.now()),
            updated_at=func.now(),
        )
        .returning(
            Job.owner_id,
            Job.attempt,
            Job.agent_config,
            Job.input,
            Job.timeout_s,
            Job.correlation_id,
        )
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    claim = Claim(job_id, *row)
    _append(
        session,
        claim.owner_id,
        job_id,
        EventType.JOB_STARTED,
        {"attempt": claim.attempt},
        claim.correlation_id,
    )
    defer(session, JobChanged(job_id, "running"))
    return claim


def succeed(session: Session, claim: Claim, output: dict[str, Any]) -> bool:
    """Record the result of the attempt; False when this worker no longer holds the job."""
    return _finish(session, claim, "succeeded", EventType.JOB_SUCCEEDED, output=output)


def fail(session: Session, claim: Claim, error: dict[str, Any]) -> bool:
    return _finish(session, claim, "failed", EventType.JOB_FAILED, error=error)


def _finish(
    session: Session,
    claim: Claim,
    status: str,
    event_type: EventType,
    *,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    # The attempt number fences a worker whose lease was taken over: its write matches nothing.
    done = session.execute(
        update(Job)
        .where(Job.id == claim.job_id, Job.status == "running", Job.attempt == claim.attempt)
        .values(
            status=status,
            output=output,
            error=error,
            lease_expires_at=None,
            finished_at=func.now(),
            updated_at=func.now(),
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if done is None:
        return False
    data: dict[str, Any] = {"attempt": claim.attempt}
    if output is not None:
        data["output"] = output
    if error is not None:
        data["error"] = error
    _append(session, claim.owner_id, claim.job_id, event_type, data, claim.correlation_id)
    defer(session, JobChanged(claim.job_id, status))
    return True


def republish_stale(session: Session, *, older_than_s: int, batch: int = 500) -> list[uuid.UUID]:
    """Publish again jobs whose message may be lost: queued too long, or lease expired.

    A duplicate message is harmless (the claim finds nothing), so erring on the side of
    publishing again costs little; a lost one would leave the job waiting forever.
    """
    cutoff = func.now() - dt.timedelta(seconds=older_than_s)
    stale = (
        select(Job.id)
        .where(
            ((Job.status == "queued") & (Job.updated_at < cutoff))
            | (_lease_expired() & (Job.attempt < Job.max_attempts))
        )
        .order_by(Job.updated_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    ids = list(
        session.scalars(
            update(Job)
            .where(Job.id.in_(stale.scalar_subquery()))
            .values(updated_at=func.now())
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    for job_id in ids:
        defer(session, SendTask(RUN_JOB_TASK, AGENTS_QUEUE, (str(job_id),)))
    return ids


def fail_abandoned(session: Session, *, batch: int = 500) -> list[uuid.UUID]:
    """Fail running jobs whose worker vanished on their last allowed attempt.

    Without this such a job would stay `running` forever: no claim may start another attempt.
    """
    abandoned = (
        select(Job.id)
        .where(_lease_expired() & (Job.attempt >= Job.max_attempts))
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(abandoned.scalar_subquery()))
        .values(
            status="failed",
            error=func.jsonb_build_object(
                "type",
                "transient",
                "message",
                func.format(
                    "the worker running attempt %s of %s stopped responding",
                    Job.attempt,
                    Job.max_attempts,
                ),
            ),
            lease_expires_at=None,
            finished_at=func.now(),
            updated_at=func.now(),
        )
        .returning(Job.id, Job.owner_id, Job.attempt, Job.error, Job.correlation_id)
        .execution_options(synchronize_session=False)
    ).all()
    for job_id, owner_id, attempt, error, correlation_id in rows:
        _append(
            session,
            owner_id,
            job_id,
            EventType.JOB_FAILED,
            {"attempt": attempt, "error": error},
            correlation_id,
        )
        defer(session, JobChanged(job_id, "failed"))
    return [row.id for row in rows]


def _lease_expired() -> Any:
    return (Job.status == "running") & (Job.lease_expires_at < func.now())


def _append(
    session: Session,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    event_type: EventType,
    data: dict[str, Any],
    correlation_id: str | None,
) -> None:
    metadata = {"correlation_id": correlation_id} if correlation_id else {}
    event_store.append(
        session,
        owner_id=owner_id,
        stream=job_stream(job_id),
        events=[NewEvent(type=event_type, data={"job_id": str(job_id), **data}, metadata=metadata)],
    )
