"""The periodic sweep that makes every accepted job end, whatever process died.

Each step touches a bounded batch, skips rows other transactions hold, and is safe to run
concurrently with workers: its UPDATEs carry their own preconditions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session

from models import IdempotencyKey, Job
from services import job_events
from services.event_types import EventType
from services.job_policy import JobPolicy
from services.job_transitions import end_jobs, seconds, waits_anew

BATCH = 500
IDEMPOTENCY_TTL_S = 24 * 3600


@dataclass
class SweepReport:
    cancelled_unheld: list[uuid.UUID] = field(default_factory=list)
    queue_timed_out: list[uuid.UUID] = field(default_factory=list)
    force_cancelled: list[uuid.UUID] = field(default_factory=list)
    run_timed_out: list[uuid.UUID] = field(default_factory=list)
    abandoned: list[uuid.UUID] = field(default_factory=list)
    requeued: list[uuid.UUID] = field(default_factory=list)
    republished: list[uuid.UUID] = field(default_factory=list)

    def total(self) -> int:
        return sum(len(ids) for ids in vars(self).values())


def sweep(
    session: Session, *, policy: JobPolicy, waiting_messages: int | None = None
) -> SweepReport:
    report = SweepReport()
    lease_expired = (Job.status == "running") & (Job.lease_expires_at < func.now())
    # A cancel asked for wins over whatever else would come of a job no worker holds: a
    # lost attempt's time-out, failure or next attempt, a queued job's queue timeout (jobs
    # were queued with a cancel request before the claim refused those).
    report.cancelled_unheld = end_jobs(
        session,
        _batch(Job.cancel_requested_at.is_not(None) & ((Job.status == "queued") | lease_expired)),
        "cancelled",
        reason="cancelled by the client; no worker held the job",
    )
    report.queue_timed_out = end_jobs(
        session,
        _batch((Job.status == "queued") & (Job.queue_deadline_at <= func.now())),
        "timed_out",
        error=_error("timeout", "the job did not start before its queue timeout"),
    )
    report.force_cancelled = end_jobs(
        session,
        _batch(
            (Job.status == "running")
            & (Job.cancel_requested_at < func.now() - seconds(policy.grace_s))
        ),
        "cancelled",
        reason=f"the runner did not stop within {policy.grace_s} s of the cancel request",
    )
    # Lost attempts of jobs no cancel was asked for (one asked for since the first step
    # waits for the next sweep): each times out, fails or runs again.
    lost = lease_expired & Job.cancel_requested_at.is_(None)
    report.run_timed_out = end_jobs(
        session,
        _batch(lost & (Job.deadline_at < func.now())),
        "timed_out",
        error=_error("timeout", "the attempt did not finish within the job's timeout"),
    )
    report.abandoned = end_jobs(
        session,
        _batch(lost & (Job.attempt >= Job.max_attempts)),
        "failed",
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
    )
    report.requeued = _requeue_lost(session, lost, policy)
    report.republished = _republish_waiting(session, policy, waiting_messages)
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.created_at < func.now() - seconds(IDEMPOTENCY_TTL_S)
        )
    )
    return report


def _requeue_lost(
    session: Session, lost: ColumnElement[bool], policy: JobPolicy
) -> list[uuid.UUID]:
    """Queue again, as a new attempt, jobs whose worker stopped renewing its lease."""
    rows = session.execute(
        update(Job)
        .where(_batch(lost & (Job.attempt < Job.max_attempts)))
        .values(
            status="queued",
            lease_expires_at=None,
            deadline_at=None,
            updated_at=func.now(),
            **waits_anew(func.now()),
        )
        .returning(Job.id, Job.owner_id, Job.attempt, Job.timeout_s, Job.correlation_id)
        .execution_options(synchronize_session=False)
    ).all()
    for job_id, owner_id, attempt, timeout_s, correlation_id in rows:
        job_events.record(
            session,
            owner_id=owner_id,
            job_id=job_id,
            event_type=EventType.JOB_REQUEUED,
            status="queued",
            data={"attempt": attempt, "reason": "the worker stopped responding"},
            correlation_id=correlation_id,
        )
        job_events.publish_run(session, job_id, timeout_s=timeout_s, grace_s=policy.grace_s)
    return [row.id for row in rows]


def _republish_waiting(
    session: Session, policy: JobPolicy, waiting_messages: int | None
) -> list[uuid.UUID]:
    """Publish again queued jobs that are due but untouched for a while: their message may
    be lost (Redis restarted, a publish failed). A duplicate finds nothing to claim.

    With `waiting_messages` (the agents queue's length), only as many are published as the
    queue lacks: at least `due queued jobs - waiting messages` messages are missing. Without
    it every stale job would be published again each period while it merely waits in line,
    and the duplicates would fill the queue (and trip backpressure).
    """
    due = (Job.status == "queued") & (Job.run_after.is_(None) | (Job.run_after <= func.now()))
    limit = BATCH
    if waiting_messages is not None:
        due_jobs = session.scalar(select(func.count()).select_from(Job).where(due)) or 0
        limit = min(BATCH, due_jobs - waiting_messages)
        if limit <= 0:
            return []
    waited_since = func.greatest(Job.updated_at, func.coalesce(Job.run_after, Job.updated_at))
    stale = (
        select(Job.id)
        .where(due & (waited_since < func.now() - seconds(policy.republish_after_s)))
        .order_by(Job.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(stale.scalar_subquery()))
        .values(updated_at=func.now())
        .returning(Job.id, Job.timeout_s)
        .execution_options(synchronize_session=False)
    ).all()
    for job_id, timeout_s in rows:
        job_events.publish_run(session, job_id, timeout_s=timeout_s, grace_s=policy.grace_s)
    return [row.id for row in rows]


def _batch(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """Limit a sweep step to a batch of rows no other transaction is holding."""
    chosen = (
        select(Job.id)
        .where(condition)
        .order_by(Job.updated_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    return Job.id.in_(chosen.scalar_subquery()) & condition


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message}
