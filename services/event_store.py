"""The append-only event log: the one function that adds events, and the readers.

Appends to one stream are serialized by a row lock on the stream's row in `streams`, which
also holds the stream's version: versions are exactly 1..n with no gap or duplicate, and
`expected_version` is checked under that lock. Domain events are appended in the same
transaction as the state change they describe.

The owner's feed never skips an event that commits late. Positions come from a sequence
while transactions are open, so commits can reveal them out of order. The feed therefore
serves only events of transactions older than every transaction still running
(`tx_id < pg_snapshot_xmin(pg_current_snapshot())`), in (tx_id, position) order: anything
that commits later has a larger transaction id and sorts after everything served before.
A long-running writing transaction delays the feed; it never loses or reorders an event.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import Select, cast, func, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import Event
from models.db import UnitOfWork, fetch_all_on_driver, fetch_one_on_driver
from models.ids import new_id
from services import metrics
from services.after_commit import Announce, defer, events_key
from services.errors import Conflict, FieldProblem, InvalidInput
from services.inputs import same_json
from services.pagination import ByteBound, bounded_rows
from services.preconditions import VersionCondition

ExpectedVersion = int | Literal["any", "no_stream"]
# The largest `data` of a client's or an agent's event, as JSON (EVENT_MAX_DATA_BYTES).
MAX_DATA_BYTES = 64 * 1024


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


class DuplicateEventIds(Conflict):
    slug = "duplicate-event-ids"
    title = "Event ids already used"


class EventIdTaken(DuplicateEventIds):
    """Another transaction committed one of these event ids after the replay check read,
    appending to another stream (the stream's lock serializes writers of one stream). The
    insert waited for it on the unique index, and failed: the transaction is spoilt, and
    a new one would find that event and refuse the ids as the check does."""


# The unique index on (owner_id, event_id), named by models.base's convention, and the
# key PostgreSQL reports in a violation of it: "Key (owner_id, event_id)=(<uuid>, <uuid>)".
EVENT_ID_CONSTRAINT = "uq_events_owner_id_event_id"
_TAKEN_ID = re.compile(r"=\([0-9a-f-]{36}, ([0-9a-f-]{36})\)")


# Rows inserted in name order, so locks are taken in that order; one statement for any
# number of streams (a VALUES list per call was compiled anew for every batch size).
# In psycopg's style, on the driver (models.db.fetch_all_on_driver), as the inserts below:
# SQLAlchemy's execution of a text() statement cost more than the statement itself.
_LOCK_STREAMS = """
    INSERT INTO streams (owner_id, name, version)
    SELECT %(owner_id)s::uuid, n.name, 0
    FROM unnest(%(names)s::text[]) AS n(name)
    ORDER BY n.name
    ON CONFLICT (owner_id, name) DO UPDATE SET version = streams.version
    RETURNING name, version
    """


def lock_streams(session: Session, *, owner_id: uuid.UUID, names: Sequence[str]) -> dict[str, int]:
    """Lock the rows of these streams (creating missing ones at version 0) and return their
    versions. Locking in sorted order keeps two batches that share streams from deadlocking;
    `DO UPDATE` with the same value is the no-op write that takes the row lock."""
    params = {"owner_id": owner_id, "names": sorted(set(names))}
    return dict(fetch_all_on_driver(session, _LOCK_STREAMS, params))


def check_events(events: Sequence[NewEvent], *, max_data_bytes: int | None = None) -> None:
    """What a request's events must be beyond their schema, every problem in one 422. No
    event id twice: the second copy could only collide with the first, and the replay
    check, which reads stored events, would not see it coming. With `max_data_bytes`, no
    data larger than that (`size_problems`)."""
    seen: set[uuid.UUID] = set()
    problems = [] if max_data_bytes is None else size_problems(events, max_data_bytes)
    for i, event in enumerate(events):
        if event.event_id is None:
            continue
        if event.event_id in seen:
            problems.append(FieldProblem(f"events.{i}.event_id", "repeats an earlier event's id"))
        seen.add(event.event_id)
    if problems:
        raise InvalidInput(problems=problems)


def size_problems(events: Sequence[NewEvent], max_data_bytes: int) -> list[FieldProblem]:
    """The events whose `data` is larger than `max_data_bytes` as JSON."""
    return [
        FieldProblem(f"events.{i}.data", f"must be at most {max_data_bytes} bytes as JSON")
        for i, event in enumerate(events)
        if len(orjson.dumps(event.data)) > max_data_bytes
    ]


def appends_in_one_statement(
    events: Sequence[NewEvent], condition: VersionCondition | None = None
) -> bool:
    """Whether `append` writes these events with one statement (a request may then run it
    in autocommit): events without ids cannot have been appended before, so no replay
    check has to read first. A `condition` is checked on the version read under the
    stream's lock, in a transaction."""
    return condition is None and all(e.event_id is None for e in events)


def append(
    session: UnitOfWork,
    *,
    owner_id: uuid.UUID,
    stream: str,
    events: Sequence[NewEvent],
    expected_version: ExpectedVersion = "any",
    condition: VersionCondition | None = None,
    max_data_bytes: int | None = None,
) -> AppendResult:
    """Add events at the end of a stream, atomically with the caller's transaction.

    Idempotent by `event_id`: when every event of the request was appended before, the
    first answer is returned and nothing is written. Events without ids (the server makes
    them) cannot have been appended before, and take one statement (`_append_new`), which
    a request may run in autocommit (`models.db.OneStatement`).

    `condition` (HTTP's `If-Match` / `If-None-Match`) is checked against the stream's
    version, its ETag, before `expected_version`: 412 when it fails. A stream without
    events does not exist: no `If-Match` holds for it, and `If-None-Match: *` does.

    `max_data_bytes` bounds each event's data, for events of clients and agents (422); the
    server's own (a document's) are bounded by what they record.
    """
    check_events(events, max_data_bytes=max_data_bytes)
    if appends_in_one_statement(events, condition):
        return _append_new(session, owner_id, stream, events, expected_version)
    if not isinstance(session, Session):  # a caller's mistake, not the client's
        raise RuntimeError("events with ids or a condition need a transaction: they read first")
    current = lock_streams(session, owner_id=owner_id, names=[stream])[stream]
    replay = _replay(session, owner_id, stream, events)
    if replay is not None:
        return replay
    if condition is not None:
        if current:
            condition.check("stream", current)
        else:
            condition.check_missing("stream")
    _check_expected(current, expected_version)
    rows = [_row(stream, current + offset, event) for offset, event in enumerate(events, start=1)]
    positions = insert_rows(session, owner_id, rows, versions={stream: current + len(rows)})
    return AppendResult(
        first_version=current + 1, last_version=current + len(rows), positions=positions
    )


# One statement for any number of events: the rows travel as one JSON document that the
# server unpacks. Binding parameters per row (or per-row array elements) cost the client
# far more than the insert costs the server, and dominated batch ingestion.
# In psycopg's parameter style: it runs on the driver (models.db.fetch_all_on_driver), and
# the ids come back as text, so a thousand rows cost one fetch of plain tuples, not a
# thousand of SQLAlchemy's rows and UUID objects made only to be printed back.
# The streams' new versions are written in the same statement: one round trip fewer per
# append and per batch. A data-modifying WITH runs to completion whether or not the outer
# query reads it. The caller holds the streams' rows (lock_streams).
_ROWS = """jsonb_to_recordset(%(rows)s::jsonb)
        AS e(event_id uuid, stream text, version int, type text, data jsonb, metadata jsonb)"""
_SET_VERSIONS = """versions_set AS (
        UPDATE streams SET version = v.version, updated_at = now()
        FROM unnest(%(names)s::text[], %(versions)s::int[]) AS v(name, version)
        WHERE streams.owner_id = %(owner_id)s AND streams.name = v.name
    )
    SELECT event_id, position FROM inserted"""
_INSERT_ROWS_SETTING_VERSIONS = f"""
    WITH inserted AS (
        INSERT INTO events (event_id, owner_id, stream, version, type, data, metadata)
        SELECT e.event_id, %(owner_id)s, e.stream, e.version, e.type, e.data, e.metadata
        FROM {_ROWS}
        RETURNING event_id::text, position
    ), {_SET_VERSIONS}
    """  # noqa: S608 (constants of this module, no input)
# The same, with the rows inserted in event id order. Transactions that share ids (each
# appending to its own stream) then wait for each other on the unique index in one order:
# the first to take the smallest shared id wins, the others wait there and then meet it, a
# violation (EventIdTaken). In each request's order, each could hold an id another one
# waited for: a deadlock, which PostgreSQL broke after `deadlock_timeout` by failing one.
# Positions are drawn before the sort, in the rows' order (the request's: the function
# yields the array in order; a subquery with a volatile output is not flattened), and
# written over the identity: a stream's positions rise with its versions, and the feed,
# in position order within a transaction, keeps the request's order.
_INSERT_ROWS_IN_ID_ORDER_SETTING_VERSIONS = f"""
    WITH inserted AS (
        INSERT INTO events (position, event_id, owner_id, stream, version, type, data, metadata)
        OVERRIDING SYSTEM VALUE
        SELECT i.position, i.event_id, %(owner_id)s, i.stream, i.version, i.type, i.data,
               i.metadata
        FROM (SELECT nextval('events_position_seq') AS position, e.* FROM {_ROWS}) AS i
        ORDER BY i.event_id
        RETURNING event_id::text, position
    ), {_SET_VERSIONS}
    """  # noqa: S608 (constants of this module, no input)


# Events that cannot have been appended before, in one statement: the stream's row is
# created or moved on by their count (its lock serializes writers of the stream, as
# lock_streams' does), and the events take the versions below the new one.
# - `expected_version` is the upsert's guard: a stream that is not at %(wanted)s (NULL:
#   any) keeps its version and returns no row, and no event is written.
# - A stream that does not exist yet is created at the count only when the caller expects
#   no stream (%(new_ok)s); otherwise at version 0, like the rows lock_streams creates,
#   and `version >= count` then holds for no row, so nothing is written.
# - A writer that waits for the row's lock meets the version the first one committed
#   (ON CONFLICT DO UPDATE reads the latest row), so versions stay 1..n.
_APPEND_NEW = """
    WITH stream AS (
        INSERT INTO streams AS s (owner_id, name, version)
        VALUES (%(owner_id)s, %(stream)s, CASE WHEN %(new_ok)s THEN %(count)s ELSE 0 END)
        ON CONFLICT (owner_id, name) DO UPDATE
            SET version = s.version + %(count)s, updated_at = now()
            WHERE %(wanted)s::int IS NULL OR s.version = %(wanted)s::int
        RETURNING s.version
    )
    INSERT INTO events (event_id, owner_id, stream, version, type, data, metadata)
    SELECT e.event_id, %(owner_id)s, %(stream)s, stream.version - %(count)s + e.version,
           e.type, e.data, e.metadata
    FROM stream, jsonb_to_recordset(%(rows)s::jsonb)
        AS e(event_id uuid, version int, type text, data jsonb, metadata jsonb)
    WHERE stream.version >= %(count)s
    RETURNING version, position
    """


def _append_new(
    unit: UnitOfWork,
    owner_id: uuid.UUID,
    stream: str,
    events: Sequence[NewEvent],
    expected_version: ExpectedVersion,
) -> AppendResult:
    wanted = None if expected_version == "any" else _wanted(expected_version)
    # Versions 1..count here: the statement adds them to the stream's version before.
    rows = [_row(stream, offset, event) for offset, event in enumerate(events, start=1)]
    params = {
        "owner_id": owner_id,
        "stream": stream,
        "count": len(rows),
        "wanted": wanted,
        "new_ok": wanted is None or wanted == 0,
        "rows": orjson.dumps(rows).decode(),
    }
    written = sorted(fetch_all_on_driver(unit, _APPEND_NEW, params))
    if not written:  # the stream was not at the expected version
        current = stream_version(unit, owner_id=owner_id, stream=stream)
        raise _wrong_version(current, expected_version)
    appended(unit, owner_id, len(rows))
    return AppendResult(
        first_version=written[0][0],
        last_version=written[-1][0],
        positions=[position for _, position in written],
    )


# One event at the next version of stream %(stream)s, for each row `j` (with an owner_id)
# of {source}; {data} and {metadata} are SQL expressions. For server-written streams whose
# writers the caller serializes (a job's row lock): the version is read in the statement's
# snapshot, and the stream's unique version refuses a concurrent writer's. In psycopg's
# style, run on the driver. Job transitions build their one-statement writes on it too.
_APPEND_NEXT = """
    INSERT INTO events (event_id, owner_id, stream, version, type, data, metadata)
    SELECT %(event_id)s::uuid, j.owner_id, %(stream)s::varchar,
           (SELECT coalesce(max(e.version), 0) + 1 FROM events AS e
            WHERE e.owner_id = j.owner_id AND e.stream = %(stream)s::varchar),
           %(event_type)s::varchar, {data}, {metadata}
    FROM {source} AS j
    """


def append_next_sql(*, source: str, data: str, metadata: str) -> str:
    """The statement (or CTE body) that appends one event per row of `source`."""
    return _APPEND_NEXT.format(source=source, data=data, metadata=metadata)


# Every job writes two of these (started, ended) when its transition is not one statement.
_APPEND_SERIALIZED = (
    append_next_sql(
        source="(SELECT %(owner_id)s::uuid AS owner_id)",
        data="%(data)s::jsonb",
        metadata="%(metadata)s::jsonb",
    )
    + "RETURNING position"
)


def append_serialized(
    session: Session, *, owner_id: uuid.UUID, stream: str, event: NewEvent
) -> int:
    """Append one event in one round trip, for a server-written stream whose writers the
    caller already serializes with a row lock of its own (a job's row for `job-<id>`).

    It skips the `streams` row that client streams use; reserved streams are never written
    by clients, so nothing else relies on that row for them. Returns the position.
    """
    row = fetch_one_on_driver(
        session,
        _APPEND_SERIALIZED,
        {
            "event_id": event.event_id or new_id(),
            "owner_id": owner_id,
            "stream": stream,
            "event_type": str(event.type),
            "data": orjson.dumps(dict(event.data), default=str).decode(),
            "metadata": orjson.dumps(dict(event.metadata), default=str).decode(),
        },
    )
    assert row is not None  # an INSERT of one row returns it, or raises
    position: int = row[0]
    appended(session, owner_id, 1)
    return position


def appended(unit: UnitOfWork, owner_id: uuid.UUID, count: int) -> None:
    """After commit, the owner's live tails and long-polls hear of new events; they count."""
    defer(unit, Announce(events_key(owner_id)))
    metrics.count_after_commit(unit, metrics.EVENTS_APPENDED, count)


def insert_rows(
    session: Session,
    owner_id: uuid.UUID,
    rows: list[dict[str, Any]],
    *,
    versions: Mapping[str, int],
    client_ids: bool = True,
) -> list[int]:
    """Insert prepared rows of one owner and set their streams' `versions`, in one
    statement; the rows' positions, which follow the rows' order.

    Rows are written in event id order, so that requests sharing ids wait for each other
    instead of deadlocking (the later one gets `EventIdTaken`). A single row, or rows whose
    ids the server made (`client_ids=False`: no other transaction can hold them), are
    written as they come: the sort costs PostgreSQL 0.05 ms for one row, 2 ms for 1,000.
    """
    if not rows:
        return []
    params = {
        "owner_id": owner_id,
        "rows": orjson.dumps(rows, default=str).decode(),
        "names": list(versions),
        "versions": list(versions.values()),
    }
    try:
        positions = fetch_all_on_driver(
            session,
            _INSERT_ROWS_IN_ID_ORDER_SETTING_VERSIONS
            if client_ids and len(rows) > 1
            else _INSERT_ROWS_SETTING_VERSIONS,
            params,
        )
    except IntegrityError as error:
        diagnostics = getattr(error.orig, "diag", None)
        if getattr(diagnostics, "constraint_name", None) != EVENT_ID_CONSTRAINT:
            raise
        taken = _TAKEN_ID.findall(getattr(diagnostics, "message_detail", None) or "")
        raise EventIdTaken(
            "some of these event ids were appended meanwhile, by another request",
            extra={"event_ids": taken},
        ) from None
    position_of: dict[str, int] = dict(positions)
    appended(session, owner_id, len(rows))
    return [position_of[str(row["event_id"])] for row in rows]


def existing_events(
    session: Session, owner_id: uuid.UUID, event_ids: Sequence[uuid.UUID | str]
) -> dict[uuid.UUID, Event]:
    if not event_ids:
        return {}
    # As text, one parameter: cheaper to bind than an array of a thousand UUIDs. Unnested
    # into a set to join, not `event_id = ANY(<the array>)`: as a filter, that array was
    # parsed again for every row of the owner's, and the statement's generic plan (psycopg
    # prepares it; PostgreSQL plans it once for all) came to filter them all when planned
    # against a small table: persisting a batch of 1000 ids took 7.8 s on 11,000 events.
    wanted = func.unnest(
        cast(func.string_to_array(",".join(str(i) for i in event_ids), ","), ARRAY(PG_UUID))
    )
    rows = session.scalars(
        select(Event).where(Event.owner_id == owner_id, Event.event_id.in_(select(wanted)))
    )
    return {row.event_id: row for row in rows}


def _replay(
    session: Session, owner_id: uuid.UUID, stream: str, events: Sequence[NewEvent]
) -> AppendResult | None:
    ids = [e.event_id for e in events if e.event_id is not None]
    found = existing_events(session, owner_id, ids)
    if not found:
        return None
    earlier = [found[i] for i in ids if i in found]
    if not (len(found) == len(events) == len(ids) and _same_events(earlier, stream, events)):
        raise DuplicateEventIds(
            "some of these event ids were appended before, but not as this same request",
            extra={"event_ids": sorted(str(i) for i in found)},
        )
    return AppendResult(
        first_version=earlier[0].version,
        last_version=earlier[-1].version,
        positions=[e.position for e in earlier],
    )


def _same_events(earlier: list[Event], stream: str, events: Sequence[NewEvent]) -> bool:
    """The stored events are this request's: its stream, one after another in its order,
    each with its type, data and metadata. Ids alone answered a different body with the
    first answer (its data thrown away unsaid), and the same ids in another order with
    `first_version` 2, `last_version` 1."""
    first = earlier[0].version
    return all(
        row.stream == stream
        and row.version == first + offset
        and same_body(row, str(event.type), event.data, event.metadata)
        for offset, (row, event) in enumerate(zip(earlier, events, strict=True))
    )


def same_body(
    earlier: Event, type_: str, data: Mapping[str, Any], metadata: Mapping[str, Any]
) -> bool:
    """The stored event has this type, data and metadata, as JSON sees them."""
    return (
        earlier.type == type_
        and same_json(earlier.data, data)
        and same_json(earlier.metadata_, metadata)
    )


def _row(stream: str, version: int, event: NewEvent) -> dict[str, Any]:
    # No owner: every statement takes it as one parameter, not from each of a thousand rows.
    return {
        "event_id": event.event_id or new_id(),
        "stream": stream,
        "version": version,
        "type": str(event.type),
        "data": dict(event.data),
        "metadata": dict(event.metadata),
    }


def _wanted(expected: int | Literal["no_stream"]) -> int:
    return 0 if expected == "no_stream" else expected


def _check_expected(current: int, expected: ExpectedVersion) -> None:
    if expected != "any" and current != _wanted(expected):
        raise _wrong_version(current, expected)


def _wrong_version(current: int, expected: ExpectedVersion) -> WrongExpectedVersion:
    return WrongExpectedVersion(
        f"the stream is at version {current}, not {expected}",
        extra={"current_version": current},
    )


_STREAM_VERSION = "SELECT version FROM streams WHERE owner_id = %(owner_id)s AND name = %(stream)s"


def stream_version(unit: UnitOfWork, *, owner_id: uuid.UUID, stream: str) -> int:
    """The version of the last event in the stream; 0 when the stream has none."""
    params = {"owner_id": owner_id, "stream": stream}
    row = fetch_one_on_driver(unit, _STREAM_VERSION, params)
    return row[0] if row else 0


_LAST_VERSION = (
    "SELECT max(version) FROM events WHERE owner_id = %(owner_id)s AND stream = %(stream)s"
)


def last_version(unit: UnitOfWork, *, owner_id: uuid.UUID, stream: str) -> int:
    """The version of the stream's last event, read from the events themselves (0: none):
    server-written streams keep no `streams` row, so `stream_version` knows nothing of them."""
    params = {"owner_id": owner_id, "stream": stream}
    row = fetch_one_on_driver(unit, _LAST_VERSION, params)
    last: int | None = row[0] if row else None
    return last or 0


def read_stream(
    session: Session,
    *,
    owner_id: uuid.UUID,
    stream: str,
    from_version: int = 1,
    limit: int = 100,
) -> list[Event]:
    """Events of one stream in version order, starting at `from_version`."""
    query = _stream_query(owner_id, stream, from_version)
    return list(session.scalars(query.order_by(Event.version).limit(limit)))


def stream_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    stream: str,
    from_version: int,
    limit: int,
    max_bytes: int,
    backward: bool = False,
) -> tuple[list[Event], bool]:
    """`read_stream`, bounded by `max_bytes` of data and metadata as well (a page ends
    after the event that reaches it); and whether more events follow the page. `backward`:
    from `from_version` down, newest first (the same index, scanned the other way)."""
    if not backward:
        query = _stream_query(owner_id, stream, from_version)
        return bounded_rows(session, query, [Event.version], _bound(max_bytes), limit=limit)
    query = select(Event).where(
        Event.owner_id == owner_id, Event.stream == stream, Event.version <= from_version
    )
    return bounded_rows(session, query, [Event.version.desc()], _bound(max_bytes), limit=limit)


def _stream_query(owner_id: uuid.UUID, stream: str, from_version: int) -> Select[tuple[Event]]:
    return select(Event).where(
        Event.owner_id == owner_id, Event.stream == stream, Event.version >= from_version
    )


def _bound(max_bytes: int) -> ByteBound:
    return ByteBound(Event, [Event.data, Event.metadata_], max_bytes)


def feed_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    after: int,
    types: Sequence[str],
    limit: int,
    max_bytes: int,
) -> tuple[list[Event], bool]:
    """The owner's events after position `after` (0: from the start), in commit-safe
    order, at most `limit` and `max_bytes` of data and metadata (a page ends after the
    event that reaches it); and whether more events follow the page.

    `after` must be a position this owner's feed returned (see the module docstring):
    check a client's with `check_feed_position` first. Another finds nothing after it.
    A live tail reads a page at every announcement, from the feed's own positions.
    """
    query = _feed_query(owner_id, after, types)
    return bounded_rows(session, query, _FEED_ORDER, _bound(max_bytes), limit=limit)


_FEED_ORDER = (Event.tx_id, Event.position)


def _feed_query(owner_id: uuid.UUID, after: int, types: Sequence[str]) -> Select[tuple[Event]]:
    query = select(Event).where(
        Event.owner_id == owner_id,
        Event.tx_id < func.pg_snapshot_xmin(func.pg_current_snapshot()),
    )
    if after:
        # The cursor's transaction id stays in SQL: it is compared, never sent back.
        cursor = _feed_cursor(owner_id, after).scalar_subquery()
        query = query.where(tuple_(Event.tx_id, Event.position) > cursor)
    if types:
        query = query.where(Event.type.in_(types))
    return query


def check_feed_position(session: Session, *, owner_id: uuid.UUID, after: int) -> None:
    """`after` must be a position of the owner's feed (422 on the query's `after`)."""
    if not is_feed_position(session, owner_id=owner_id, position=after):
        raise InvalidInput(problems=[FieldProblem("after", "not a position of your feed", "query")])


def is_feed_position(session: Session, *, owner_id: uuid.UUID, position: int) -> bool:
    """Whether an event of the owner's is at `position` (another owner's is none)."""
    return bool(session.scalar(select(_feed_cursor(owner_id, position).exists())))


def _feed_cursor(owner_id: uuid.UUID, position: int) -> Select[tuple[Any, int]]:
    return select(Event.tx_id, Event.position).where(
        Event.owner_id == owner_id, Event.position == position
    )
