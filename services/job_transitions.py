"""Status changes made by workers and the sweeper, each one conditional UPDATE.

`where` clauses carry the whole precondition (status, attempt, lease), so two processes
can never both move a job, and a worker whose attempt was taken over matches no row.

The two statements every job runs (claim, finish) are built once, on the table rather
than the mapped class, with bound parameters: building an ORM UPDATE per call and
generating its cache key cost the worker about a third of its CPU per echo job.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    Row,
    String,
    Table,
    bindparam,
    func,
    literal,
    literal_column,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from models import Job
from models.db import UnitOfWork, fetch_one_on_driver
from models.ids import new_id
from services import event_store, job_events, metrics, webhooks
from services.event_types import EventType, job_stream
from services.job_policy import JobPolicy

_END_EVENTS = {
    "succeeded": EventType.JOB_SUCCEEDED,
    "failed": EventType.JOB_FAILED,
    "cancelled": EventType.JOB_CANCELLED,
    "timed_out": EventType.JOB_TIMED_OUT,
}


@dataclass(frozen=True)
class Claim:
    """What a worker needs to run one attempt of a job."""

    job_id: uuid.UUID
    owner_id: uuid.UUID
    attempt: int
    max_attempts: int
    agent_config: dict[str, Any]
    input: dict[str, Any]
    timeout_s: int
    correlation_id: str | None


class Heartbeat:
    """What a renewal found: keep going, stop because cancel was asked, or the lease is gone."""

    CONTINUE = "continue"
    CANCEL = "cancel"
    LOST = "lost"


def seconds(value: Any) -> Any:
    """An SQL interval of `value` seconds (a number or a column)."""
    return dt.timedelta(seconds=1) * value


def waits_anew(runnable_at: Any) -> dict[str, Any]:
    """The values that start a job's wait in the queue again, as it enters `queued` to be
    claimable from `runnable_at` (now, or the end of its backoff): its whole queue timeout
    from then. A job a release before migration 0010 submitted (a rolling deploy) has no
    queue_timeout_s; its first deadline less its submit is the timeout, kept from then on."""
    first = Job.queue_deadline_at - Job.created_at
    timeout_s = func.coalesce(
        Job.queue_timeout_s, func.ceil(func.extract("epoch", first)).cast(Integer)
    )
    return {"queue_timeout_s": timeout_s, "queue_deadline_at": runnable_at + seconds(timeout_s)}


_JOBS = cast(Table, Job.__table__)
# The claim and its `job.started` event in one statement, psycopg's parameter style (it goes
# to the driver as written: models.db.fetch_one_on_driver), so that a worker can run it in
# autocommit: one round trip where BEGIN, UPDATE, INSERT and COMMIT were four. Should
# another transaction append to the stream and commit while the UPDATE waits for the row,
# the insert collides on the stream's unique version and the statement changes nothing
# (job_units.in_transaction tries it once more, in a new snapshot).
_CORRELATION = (
    "CASE WHEN coalesce(j.correlation_id, '') = '' THEN '{}'::jsonb "
    "ELSE jsonb_build_object('correlation_id', j.correlation_id) END"
)
_CLAIM = f"""
    WITH claimed AS (
        UPDATE jobs SET
            status = 'running', attempt = attempt + 1,
            lease_expires_at = now() + make_interval(secs => %(lease_s)s::float8),
            deadline_at = now() + make_interval(secs => timeout_s), run_after = NULL,
            started_at = coalesce(started_at, now()), updated_at = now()
        WHERE id = %(job_id)s::uuid AND status = 'queued' AND attempt < max_attempts
          AND cancel_requested_at IS NULL AND (run_after IS NULL OR run_after <= now())
          AND (queue_deadline_at IS NULL OR queue_deadline_at > now())
        RETURNING owner_id, attempt, max_attempts, agent_config, input, timeout_s,
                  correlation_id
    ), started AS ({
    event_store.append_next_sql(
        source="claimed",
        data="jsonb_build_object('job_id', %(job_id)s::text, 'attempt', j.attempt)",
        metadata=_CORRELATION,
    )
})
    SELECT owner_id, attempt, max_attempts, agent_config, input, timeout_s, correlation_id
    FROM claimed
    """  # noqa: S608
# The end of an attempt that nobody is to be told of (no webhook_url, no subscribed
# endpoint: most jobs), with its event, in one statement as the claim. A job with someone to
# tell needs its deliveries written in the same transaction: this matches no row for it,
# and `finish` does it all. Who is subscribed is webhooks.subscribers' rule, compiled here.
_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]
_SUBSCRIBERS = webhooks.subscribers(
    literal_column("jobs.owner_id"), bindparam("end_event", type_=ARRAY(String))
)
_FINISH_UNTOLD = f"""
    WITH ended AS (
        UPDATE jobs SET
            status = %(status)s::varchar, output = %(output)s::jsonb, error = %(error)s::jsonb,
            lease_expires_at = NULL, deadline_at = NULL, run_after = NULL,
            finished_at = now(), updated_at = now()
        WHERE id = %(job_id)s::uuid AND status = 'running' AND attempt = %(attempt)s::int
          AND webhook_url IS NULL
          AND {_SUBSCRIBERS.compile(dialect=_POSTGRESQL)} IS NULL
        RETURNING owner_id, correlation_id
    )
    {event_store.append_next_sql(source="ended", data="%(data)s::jsonb", metadata=_CORRELATION)}
    RETURNING position
    """  # noqa: S608


# What recording an end needs of each job an UPDATE ended, who hears of it included: the
# subscribed endpoints and the job's webhook_url come back with the row, one round trip
# fewer per ending job than asking afterwards (webhooks.job_ended).
def _ended(end_event: Any) -> tuple[Any, ...]:
    return (
        _JOBS.c.id,
        _JOBS.c.owner_id,
        _JOBS.c.attempt,
        _JOBS.c.error,
        _JOBS.c.correlation_id,
        _JOBS.c.webhook_url,
        webhooks.subscribers(_JOBS.c.owner_id, end_event).correlate(_JOBS),
    )


_END_VALUES = {
    "lease_expires_at": None,
    "deadline_at": None,
    "run_after": None,
    "finished_at": func.now(),
    "updated_at": func.now(),
}
_FINISH = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.status == "running",
        _JOBS.c.attempt == bindparam("held_attempt"),
    )
    .values(
        status=bindparam("new_status"),
        output=bindparam("new_output", type_=_JOBS.c.output.type),
        error=bindparam("new_error", type_=_JOBS.c.error.type),
        **_END_VALUES,
    )
    .returning(*_ended(bindparam("end_event", type_=ARRAY(String))))
)


def claim(unit: UnitOfWork, *, job_id: uuid.UUID, policy: JobPolicy) -> Claim | None:
    """Take a due queued job for its next attempt; None when there is nothing to take."""
    row = fetch_one_on_driver(
        unit,
        _CLAIM,
        {
            "job_id": job_id,
            "lease_s": policy.lease_s,
            "event_id": new_id(),
            "stream": job_stream(job_id),
            "event_type": str(EventType.JOB_STARTED),
        },
    )
    if row is None:
        return None
    taken = Claim(job_id, *row)
    job_events.announce(unit, owner_id=taken.owner_id, job_id=job_id, status="running")
    return taken


def heartbeat(session: Session, claim: Claim, *, policy: JobPolicy) -> str:
    """Renew the lease of a running attempt."""
    row = session.execute(
        update(Job)
        .where(_holds(claim))
        .values(lease_expires_at=func.now() + seconds(policy.lease_s))
        .returning(Job.cancel_requested_at)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return Heartbeat.LOST
    return Heartbeat.CANCEL if row.cancel_requested_at is not None else Heartbeat.CONTINUE


def cancel_requested(session: Session, claim: Claim) -> bool | None:
    """Whether a cancel was asked for this attempt; None when the attempt is no longer ours."""
    row = session.execute(
        Job.__table__.select().with_only_columns(Job.cancel_requested_at).where(_holds(claim))
    ).one_or_none()
    return None if row is None else row.cancel_requested_at is not None


def progress(session: Session, claim: Claim, event_type: str, data: dict[str, Any]) -> bool:
    """Append a progress event of the attempt (a step, a tool call, output text); False when
    this worker no longer holds the job. Locking the job row orders it with cancels."""
    held = session.execute(
        update(Job)
        .where(_holds(claim))
        .values(updated_at=func.now())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if held is None:
        return False
    job_events.record(
        session,
        owner_id=claim.owner_id,
        job_id=claim.job_id,
        event_type=event_type,
        status="running",
        data={"attempt": claim.attempt, **data},
        correlation_id=claim.correlation_id,
    )
    return True


def finish_untold(
    unit: UnitOfWork,
    claim: Claim,
    status: str,
    *,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """End the attempt's job in `status` in one statement, if nobody is to be told of it;
    False when it was not ended here (someone is to be told, or this worker no longer
    holds it): `finish` then decides, in a transaction."""
    event_type = str(_END_EVENTS[status])
    data = {"job_id": str(claim.job_id), **_end_data(claim.attempt, output, error, None)}
    row = fetch_one_on_driver(
        unit,
        _FINISH_UNTOLD,
        {
            "job_id": claim.job_id,
            "attempt": claim.attempt,
            "status": status,
            # None as JSON null, as the ORM's JSONB columns store it (`finish` included)
            "output": orjson.dumps(output).decode(),
            "error": orjson.dumps(error).decode(),
            "event_id": new_id(),
            "stream": job_stream(claim.job_id),
            "event_type": event_type,
            "end_event": [event_type],
            "data": orjson.dumps(data, default=str).decode(),
        },
    )
    if row is None:
        return False
    job_events.announce(unit, owner_id=claim.owner_id, job_id=claim.job_id, status=status)
    metrics.count_after_commit(unit, metrics.JOBS_FINISHED, 1, status=status)
    return True


def finish(
    session: Session,
    claim: Claim,
    status: str,
    *,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """End the attempt's job in `status`; False when this worker no longer holds it."""
    rows = session.execute(
        _FINISH,
        {
            "job_id": claim.job_id,
            "held_attempt": claim.attempt,
            "new_status": status,
            "new_output": output,
            "new_error": error,
            "end_event": [str(_END_EVENTS[status])],
        },
    ).all()
    return bool(_record_ends(session, rows, status, output=output, reason=None))


def retry_later(
    session: Session, claim: Claim, *, error: dict[str, Any], delay_s: float, policy: JobPolicy
) -> str | None:
    """Queue the job again after `delay_s` for a transient failure, if attempts remain; end
    it cancelled instead if a cancel was requested. The status it was left in, or None when
    this worker no longer holds it."""
    runnable_at = func.now() + seconds(delay_s)
    row = session.execute(
        update(Job)
        .where(_holds(claim), Job.attempt < Job.max_attempts, Job.cancel_requested_at.is_(None))
        .values(
            status="queued",
            error=error,
            lease_expires_at=None,
            deadline_at=None,
            run_after=runnable_at,
            updated_at=func.now(),
            **waits_anew(runnable_at),
        )
        .returning(Job.timeout_s)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        # A statement of its own, in a new snapshot: it sees a cancel that committed while
        # the UPDATE waited for the row (and then matched nothing).
        cancelled = end_jobs(
            session,
            _holds(claim) & Job.cancel_requested_at.is_not(None),
            "cancelled",
            reason="cancelled by the client; the failed attempt was not retried",
        )
        return "cancelled" if cancelled else None
    job_events.record(
        session,
        owner_id=claim.owner_id,
        job_id=claim.job_id,
        event_type=EventType.JOB_RETRY_SCHEDULED,
        status="queued",
        data={"attempt": claim.attempt, "error": error, "retry_in_s": round(delay_s, 3)},
        correlation_id=claim.correlation_id,
    )
    job_events.publish_run(
        session, claim.job_id, timeout_s=row.timeout_s, grace_s=policy.grace_s, countdown_s=delay_s
    )
    return "queued"


def end_jobs(
    session: Session,
    where: ColumnElement[bool],
    status: str,
    *,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | ColumnElement[Any] | None = None,
    reason: str | None = None,
) -> list[uuid.UUID]:
    """Move every job matching `where` to the terminal `status`, with its event each."""
    rows = session.execute(
        update(_JOBS)
        .where(where)
        .values(status=status, output=output, error=error, **_END_VALUES)
        .returning(*_ended(literal([str(_END_EVENTS[status])], ARRAY(String))))
    ).all()
    return _record_ends(session, rows, status, output=output, reason=reason)


def _record_ends(
    session: Session,
    rows: Sequence[Row[Any]],
    status: str,
    *,
    output: dict[str, Any] | None,
    reason: str | None,
) -> list[uuid.UUID]:
    """The terminal event of each job the UPDATE ended, and the finished-jobs count."""
    metrics.count_after_commit(session, metrics.JOBS_FINISHED, len(rows), status=status)
    for job_id, owner_id, attempt, stored_error, correlation_id, webhook_url, endpoints in rows:
        data = _end_data(attempt, output, stored_error, reason)
        job_events.record(
            session,
            owner_id=owner_id,
            job_id=job_id,
            event_type=_END_EVENTS[status],
            status=status,
            data=data,
            correlation_id=correlation_id,
            told=webhooks.Told(endpoints or [], webhook_url),
        )
    return [row.id for row in rows]


def _end_data(
    attempt: int, output: dict[str, Any] | None, error: Any, reason: str | None
) -> dict[str, Any]:
    """The data of a terminal event, beside the job's id: what is known of the end."""
    data: dict[str, Any] = {"attempt": attempt}
    if output is not None:
        data["output"] = output
    if error is not None:
        data["error"] = error
    if reason is not None:
        data["reason"] = reason
    return data


def _holds(claim: Claim) -> ColumnElement[bool]:
    return (Job.id == claim.job_id) & (Job.status == "running") & (Job.attempt == claim.attempt)
