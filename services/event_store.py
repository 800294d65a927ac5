"""The append-only event log: the one function that adds events, and the readers.

Domain events are appended in the same transaction as the state change they describe, so
the log and the state never disagree.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from models import Event
from models.ids import new_id
from services.errors import Conflict

ExpectedVersion = int | Literal["any", "no_stream"]


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    event_id: uuid.UUID | None = None


@dataclass(frozen=True)
class AppendResult:
    first_version: int
    last_version: int
    positions: list[int]


class WrongExpectedVersion(Conflict):
    slug = "wrong-expected-version"
    title = "Stream version conflict"


def stream_version(session: Session, *, owner_id: uuid.UUID, stream: str) -> int:
    """The version of the last event in the stream; 0 when the stream has none."""
    return (
        session.scalar(
            select(func.coalesce(func.max(Event.version), 0)).where(
                Event.owner_id == owner_id, Event.stream == stream
            )
        )
        or 0
    )


def append(
    session: Session,
    *,
    owner_id: uuid.UUID,
    stream: str,
    events: Sequence[NewEvent],
    expected_version: ExpectedVersion = "any",
) -> AppendResult:
    """Add events at the end of a stream, atomically with the caller's transaction."""
    current = stream_version(session, owner_id=owner_id, stream=stream)
    _check_expected(current, expected_version)
    rows = [
        {
            "event_id": event.event_id or new_id(),
            "owner_id": owner_id,
            "stream": stream,
            "version": current + offset,
            "type": str(event.type),
            "data": dict(event.data),
            "metadata_": dict(event.metadata),
        }
        for offset, event in enumerate(events, start=1)
    ]
    positions = list(
        session.scalars(insert(Event).returning(Event.position, sort_by_parameter_order=True), rows)
    )
    return AppendResult(
        first_version=current + 1, last_version=current + len(rows), positions=positions
    )


def _check_expected(current: int, expected: ExpectedVersion) -> None:
    if expected == "any":
        return
    wanted = 0 if expected == "no_stream" else expected
    if current != wanted:
        raise WrongExpectedVersion(
            f"the stream is at version {current}, not {expected}",
            extra={"current_version": current},
        )


def read_stream(
    session: Session,
    *,
    owner_id: uuid.UUID,
    stream: str,
    from_version: int = 1,
    limit: int = 100,
) -> list[Event]:
    """Events of one stream in version order, starting at `from_version`."""
    return list(
        session.scalars(
            select(Event)
            .where(Event.owner_id == owner_id, Event.stream == stream)
            .where(Event.version >= from_version)
            .order_by(Event.version)
            .limit(limit)
        )
    )
