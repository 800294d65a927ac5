"""The pieces every job transition shares: its event, its announcement, its run message."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from models.db import UnitOfWork
from services import event_store, webhooks
from services.after_commit import Announce, SendTask, defer, job_key
from services.event_store import NewEvent
from services.event_types import TERMINAL_JOB_EVENTS, job_stream

RUN_JOB_TASK = "conveyor.jobs.run"
AGENTS_QUEUE = "agents"


def record(
    session: Session,
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    event_type: str,
    status: str,
    data: dict[str, Any],
    correlation_id: str | None,
    told: webhooks.Told | None = None,
) -> None:
    """Append the transition's event to the job's stream and announce it after commit.
    `told`: who hears of a terminal event, when the caller's statement returned it.

    Every transition first updates (and so locks) the job's row, which serializes the
    writers of its stream: the one-round-trip append is safe here."""
    metadata = {"correlation_id": correlation_id} if correlation_id else {}
    event_store.append_serialized(
        session,
        owner_id=owner_id,
        stream=job_stream(job_id),
        event=NewEvent(event_type, {"job_id": str(job_id), **data}, metadata),
    )
    defer(session, Announce(job_key(job_id), status))
    if event_type in TERMINAL_JOB_EVENTS:  # webhook outbox rows, in this same transaction
        webhooks.job_ended(
            session, owner_id=owner_id, job_id=job_id, event_type=event_type, told=told
        )


def announce(unit: UnitOfWork, *, owner_id: uuid.UUID, job_id: uuid.UUID, status: str) -> None:
    """After commit, what `record` sets off, for a transition whose own statement appended
    its event (job_transitions' claim and untold finish): the job's waiters and the owner's
    event tails hear of it, and the event is counted."""
    event_store.appended(unit, owner_id, 1)
    defer(unit, Announce(job_key(job_id), status))


def publish_run(
    session: UnitOfWork, job_id: uuid.UUID, *, timeout_s: int, grace_s: int, countdown_s: float = 0
) -> None:
    """Ask a worker to run the job, after commit. Celery's time limits back up our own
    deadline: soft interrupts the runner, hard kills the process after the grace period."""
    options: dict[str, Any] = {
        "soft_time_limit": timeout_s + grace_s,
        "time_limit": timeout_s + 2 * grace_s,
    }
    if countdown_s > 0:
        options["countdown"] = round(countdown_s, 3)
    defer(session, SendTask(RUN_JOB_TASK, AGENTS_QUEUE, (str(job_id),), options))
