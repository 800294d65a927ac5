"""Batch ingestion: accept up to a thousand events at once, persist them in a worker.

A batch is durable from the moment it is accepted (its events wait in `event_batches`), so
Redis losing the message or a worker dying mid-batch loses nothing: the batch stays
`pending` and the sweeper publishes it again. The worker persists a batch in one
transaction (one multi-row INSERT for all its events), so a retry either finds it done or
does it whole: nothing is duplicated. Events are idempotent by `event_id` across batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import EventBatch
from models.ids import new_id_text
from services import event_store
from services.after_commit import SendTask, defer
from services.errors import NotFound
from services.event_store import NewEvent
from services.job_transitions import seconds

PERSIST_TASK = "conveyor.events.persist_batch"
# Marks an event whose id `accept` made (a batch stored before the mark has none: all its
# ids are looked up, as they were then).
SERVER_MADE_ID = "id_by_server"
EVENTS_QUEUE = "events"


def accept(
    session: Session,
    *,
    owner_id: uuid.UUID,
    events: Sequence[tuple[str, NewEvent]],
    correlation_id: str | None = None,
) -> EventBatch:
    """Store a validated batch of (stream, event) and ask a worker to persist it."""
    event_store.check_events([event for _, event in events])
    stored = [
        {
            "stream": stream,
            "type": str(event.type),
            "data": dict(event.data),
            "metadata": dict(event.metadata),
            # Fixed now, so that persisting twice can only find the same ids.
            "event_id": str(event.event_id) if event.event_id else new_id_text(),
            **({} if event.event_id else {SERVER_MADE_ID: True}),
        }
        for stream, event in events
    ]
    batch = EventBatch(
        owner_id=owner_id, status="pending", events=stored, correlation_id=correlation_id
    )
    session.add(batch)
    session.flush()
    defer(session, SendTask(PERSIST_TASK, EVENTS_QUEUE, (str(batch.id),)))
    return batch


def get(session: Session, *, owner_id: uuid.UUID, batch_id: uuid.UUID) -> EventBatch:
    batch = session.get(EventBatch, batch_id, populate_existing=True)
    if batch is None or batch.owner_id != owner_id:
        raise NotFound("no receipt with this id")
    return batch


def persist_in_transaction(
    session_factory: sessionmaker[Session], batch_id: uuid.UUID
) -> str | None:
    """`persist` in a transaction of its own, which commits. When another request took one
    of the batch's event ids between the check and the insert (`EventIdTaken`), that
    transaction is spoilt; a second one finds the event and rejects the batch, as it would
    have had the other request come first."""
    try:
        with session_factory.begin() as session:
            return persist(session, batch_id)
    except event_store.EventIdTaken:
        with session_factory.begin() as session:
            return persist(session, batch_id)


def persist(session: Session, batch_id: uuid.UUID) -> str | None:
    """Persist a pending batch; its new status, or None when there is nothing to do."""
    batch = session.scalar(
        select(EventBatch)
        .where(EventBatch.id == batch_id, EventBatch.status == "pending")
        .with_for_update(skip_locked=True)
    )
    if batch is None:
        return None
    owner_id = batch.owner_id
    incoming = batch.events
    versions = event_store.lock_streams(
        session, owner_id=owner_id, names=[e["stream"] for e in incoming]
    )
    # Ids stay the strings `accept` stored (canonical UUID text): parsing a thousand of them
    # and printing them back cost more than the insert.
    ids: list[str] = [e["event_id"] for e in incoming]
    # Only a client's ids can have been used before: the batch is persisted once (locked,
    # and pending until its transaction commits), so an id made for it exists nowhere else.
    # Looking all of them up was a thousand index probes for nothing on a batch without ids.
    clients = [e["event_id"] for e in incoming if not e.get(SERVER_MADE_ID)]
    found = {
        str(event_id): event
        for event_id, event in event_store.existing_events(session, owner_id, clients).items()
    }

    results: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    rejected = False
    seen: set[str] = set()
    for event_id, event in zip(ids, incoming, strict=True):
        earlier = found.get(event_id)
        if event_id in seen:
            results.append(
                _rejection(
                    event_id, event["stream"], "the same event_id appears twice in this batch"
                )
            )
            rejected = True
        elif earlier is not None and earlier.stream != event["stream"]:
            results.append(
                _rejection(
                    event_id,
                    event["stream"],
                    f"this event_id was appended to stream {earlier.stream!r}",
                )
            )
            rejected = True
        elif earlier is not None and not event_store.same_body(
            earlier, event["type"], event["data"], event["metadata"]
        ):
            # As a single append's replay check (event_store._same_events): the id alone
            # made it a duplicate, and the new body was thrown away unsaid.
            results.append(
                _rejection(
                    event_id,
                    event["stream"],
                    "this event_id was appended with another type, data or metadata "
                    f"(version {earlier.version} of stream {earlier.stream!r})",
                )
            )
            rejected = True
        elif earlier is not None:
            results.append(_result(event_id, "duplicate", earlier.stream, earlier.version))
            results[-1]["position"] = earlier.position
        else:
            versions[event["stream"]] += 1
            version = versions[event["stream"]]
            rows.append(
                {
                    "event_id": event_id,
                    "stream": event["stream"],
                    "version": version,
                    "type": event["type"],
                    "data": event["data"],
                    "metadata": event["metadata"],
                }
            )
            results.append(_result(event_id, "persisted", event["stream"], version))
        seen.add(event_id)

    if rejected:
        # All or nothing: a client fixes the batch and sends it again whole.
        for result in results:
            if result["status"] != "rejected":
                result.update(
                    status="not_persisted", reason="another event of the batch was rejected"
                )
                result.pop("version", None)
                result.pop("position", None)
        return _close(session, batch, "rejected", results)

    touched = {row["stream"] for row in rows}
    positions = iter(
        event_store.insert_rows(
            session,
            owner_id,
            rows,
            versions={name: versions[name] for name in touched},
            client_ids=bool(clients),
        )
    )
    for result in results:
        if result["status"] == "persisted":
            result["position"] = next(positions)
    return _close(session, batch, "persisted", results)


def republish_pending(session: Session, *, older_than_s: int, batch: int = 200) -> list[uuid.UUID]:
    """Publish again batches still pending after a while: their message may be lost."""
    stale = (
        select(EventBatch.id)
        .where(
            EventBatch.status == "pending",
            EventBatch.updated_at < func.now() - seconds(older_than_s),
        )
        .order_by(EventBatch.updated_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    ids = list(
        session.scalars(
            update(EventBatch)
            .where(EventBatch.id.in_(stale.scalar_subquery()))
            .values(updated_at=func.now())
            .returning(EventBatch.id)
            .execution_options(synchronize_session=False)
        )
    )
    for batch_id in ids:
        defer(session, SendTask(PERSIST_TASK, EVENTS_QUEUE, (str(batch_id),)))
    return ids


def _close(session: Session, batch: EventBatch, status: str, results: list[dict[str, Any]]) -> str:
    batch.status = status
    batch.results = results
    # Decided: the events are in the log now, or refused, and no receipt shows them. Kept,
    # every batched event had a second copy here for as long as the database lived.
    batch.events = []
    if status == "persisted":
        batch.persisted_at = func.now()
    batch.updated_at = func.now()
    session.flush()
    return status


def _result(event_id: str, status: str, stream: str, version: int) -> dict[str, Any]:
    return {"event_id": event_id, "status": status, "stream": stream, "version": version}


def _rejection(event_id: str, stream: str, reason: str) -> dict[str, Any]:
    # The stream the event was meant for, as every other result names its stream.
    return {"event_id": event_id, "status": "rejected", "stream": stream, "reason": reason}
