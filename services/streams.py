"""What a client can learn of its streams without reading their events: one stream's
version and times, and the list of its streams by name.

A stream exists once it has an event. Its `created_at` and `updated_at` are when its first
and its last event were recorded, read from the events, so a server-written stream (a
job's, which keeps no `streams` row) answers as a client's does, and a row left at version
0 by a refused append (event_store._APPEND_NEW) is no stream.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, select, text, true
from sqlalchemy.orm import Session

from models import Event, Stream
from models.db import UnitOfWork, fetch_one_on_driver
from models.events import CLIENT_STREAM_NAMES
from services.errors import FieldProblem, InvalidInput, NotFound
from services.inputs import RESERVED_STREAM_PREFIXES, is_reserved_stream
from services.pagination import Page

# Above every character a stream name may hold ('z' is the largest): in byte order the
# names starting with P are exactly those from P up to, not including, P + this.
_PAST_EVERY_NAME_CHARACTER = "{"


@dataclass(frozen=True)
class StreamInfo:
    name: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


# The last event by the (owner_id, stream, version) index, and version 1, which every
# stream with events has (versions are 1..n): two index probes, one statement.
_INFO = """
    SELECT last.version, first.recorded_at, last.recorded_at
    FROM (SELECT version, recorded_at FROM events
          WHERE owner_id = %(owner_id)s AND stream = %(stream)s
          ORDER BY version DESC LIMIT 1) AS last,
         events AS first
    WHERE first.owner_id = %(owner_id)s AND first.stream = %(stream)s AND first.version = 1
    """


def get(unit: UnitOfWork, *, owner_id: uuid.UUID, stream: str) -> StreamInfo:
    """The stream's version and times; NotFound when the owner has no event in it."""
    params = {"owner_id": owner_id, "stream": stream}
    row = fetch_one_on_driver(unit, _INFO, params)
    if row is None:
        raise NotFound(f"no stream {stream!r}")
    version, created_at, updated_at = row
    return StreamInfo(stream, version, created_at, updated_at)


def list_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    limit: int,
    cursor: str | None = None,
    prefix: str | None = None,
) -> Page[StreamInfo]:
    """The owner's client streams in byte order of their names (stable while streams are
    added and appended to), after the name `cursor`, under `prefix` if given.

    Server-written streams are not listed: their rows would make a partial list (documents
    keep rows, jobs do not), and each is found from its resource (a job, a document)."""
    _check_listing(cursor, prefix)
    query = list_query(owner_id=owner_id, limit=limit + 1, cursor=cursor, prefix=prefix)
    rows = [StreamInfo(*row) for row in session.execute(query)]
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    return Page(items=rows[:limit], next_cursor=rows[limit - 1].name)


def list_query(
    *, owner_id: uuid.UUID, limit: int, cursor: str | None, prefix: str | None
) -> Select[tuple[str, int, dt.datetime, dt.datetime]]:
    """The statement of `list_page`: one range scan of ix_streams_client_names (migration
    0013), and for each stream listed, a probe of its first event for `created_at`, which
    also leaves out rows without events (at version 0)."""
    name = Stream.name.collate("C")
    first_event = (
        select(Event.recorded_at)
        .where(Event.owner_id == Stream.owner_id, Event.stream == Stream.name, Event.version == 1)
        .lateral()
    )
    query = (
        select(Stream.name, Stream.version, first_event.c.recorded_at, Stream.updated_at)
        .join(first_event, true())
        # The index's predicate as its text: the planner proves the index covers the query.
        .where(Stream.owner_id == owner_id, text(CLIENT_STREAM_NAMES))
        .order_by(name)
        .limit(limit)
    )
    if cursor is not None:
        query = query.where(name > cursor)
    if prefix is not None:
        query = query.where(*_under(name, prefix))
    return query


def _under(name: ColumnElement[str], prefix: str) -> list[ColumnElement[bool]]:
    """The names starting with `prefix`, as a range the index scans (LIKE would make `_`
    a wildcard, and is a range only under the C collation's own operators)."""
    return [name >= prefix, name < prefix + _PAST_EVERY_NAME_CHARACTER]


def _check_listing(cursor: str | None, prefix: str | None) -> None:
    """A cursor is the last name of a page of this listing; a prefix can match something."""
    if prefix is not None and is_reserved_stream(prefix):
        detail = (
            f"streams starting with {', '.join(RESERVED_STREAM_PREFIXES)} are written by the "
            "server and not listed here: find them from their jobs and documents"
        )
        raise InvalidInput(problems=[FieldProblem("prefix", detail, "query")])
    if cursor is not None and (
        is_reserved_stream(cursor) or (prefix is not None and not cursor.startswith(prefix))
    ):
        problem = FieldProblem("cursor", "not a cursor of this listing", "query")
        raise InvalidInput(problems=[problem])
