"""Documents: versioned text that agents read and write, with full-text search.

Every create, update and delete changes the row and appends `document.created`,
`document.updated` or `document.deleted` to the stream `document-<id>` in the same
transaction. The stream's version is the document's version, and a created or updated
event carries the whole state of its version, so the log is the history: a past version is
read from its event (`get_version`, `history`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import REAL, ColumnElement, Select, and_, cast, func, literal_column, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, defer

from models import Document, Event
from models.db import UnitOfWork, fetch_all_on_driver
from services import event_store, preconditions
from services.cache import VersionedCache
from services.errors import FieldProblem, InvalidInput, NotFound, ServiceError
from services.event_store import NewEvent
from services.event_types import EventType, document_stream
from services.inputs import MAX_VERSION, parse_counter
from services.pagination import Page, newest_first
from services.preconditions import VersionCondition

# What a client may set; `metadata` is the model's `metadata_`.
FIELDS = ("title", "content", "content_type", "metadata")
# The text search configuration of the search vector (migration 0004); queries must match it.
SEARCH_CONFIG: ColumnElement[Any] = literal_column("'english'::regconfig")
# The Unicode form the search vector indexes (migration 0012). A query is normalized by the
# same server, so both sides use one Unicode version's tables.
SEARCH_FORM: ColumnElement[Any] = literal_column("NFKC")


@dataclass(frozen=True)
class Limits:
    max_content_bytes: int = 1024 * 1024
    max_title_length: int = 500
    max_metadata_bytes: int = 16 * 1024


class ContentTooLarge(ServiceError):
    status = 413
    slug = "content-too-large"
    title = "Content too large"


@dataclass(frozen=True)
class DocumentVersion:
    """One version as the event log recorded it; attribute names as on `Document`, so one
    representation serves both."""

    id: uuid.UUID
    version: int
    title: str
    content: str
    content_type: str
    metadata_: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class VersionSummary:
    """An entry of a document's history, without the content."""

    version: int
    type: str
    title: str | None
    content_type: str | None
    metadata: dict[str, Any] | None
    recorded_at: dt.datetime


def create(
    session: Session,
    *,
    owner_id: uuid.UUID,
    fields: dict[str, Any],
    limits: Limits,
    correlation_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> Document:
    """A new document; `event_id`, the id of its `document.created` event, lets a writer
    that may repeat itself find it again (`created_by_event`)."""
    _check_limits(fields, limits)
    document = Document(owner_id=owner_id, version=1, **_columns(fields))
    session.add(document)
    session.flush()
    _record(session, document, EventType.DOCUMENT_CREATED, correlation_id, event_id)
    return document


def created_by_event(
    session: Session, *, owner_id: uuid.UUID, event_id: uuid.UUID
) -> Document | None:
    """The owner's document whose `document.created` event has this id, deleted or not."""
    document_id = session.scalar(
        select(Event.data["document_id"].astext).where(
            Event.owner_id == owner_id,
            Event.event_id == event_id,
            Event.type == EventType.DOCUMENT_CREATED,
        )
    )
    if document_id is None:
        return None
    return session.get(Document, uuid.UUID(document_id))


def get(session: Session, *, owner_id: uuid.UUID, document_id: uuid.UUID) -> Document:
    """The owner's live document; `NotFound` for another owner's or a deleted one."""
    document = session.get(Document, document_id)
    if document is None or document.owner_id != owner_id or document.deleted_at is not None:
        raise NotFound("no document with this id")
    return document


_LIVE_AMONG = """
    SELECT id::text FROM documents
    WHERE owner_id = %(owner_id)s AND id = ANY(%(ids)s::uuid[]) AND deleted_at IS NULL
    """


def absent(unit: UnitOfWork, *, owner_id: uuid.UUID, document_ids: Sequence[str]) -> list[int]:
    """The indexes of `document_ids` (canonical UUID text) that name no live document of
    the owner's: deleted, someone else's, or never made. One statement, on either unit."""
    live = {row[0] for row in fetch_all_on_driver(
        unit, _LIVE_AMONG, {"owner_id": owner_id, "ids": list(document_ids)}
    )}  # fmt: skip
    return [i for i, document_id in enumerate(document_ids) if document_id not in live]


def current_version(session: Session, *, owner_id: uuid.UUID, document_id: uuid.UUID) -> int:
    """The live document's version, read without its content."""
    version = session.scalar(
        select(Document.version).where(*_live(owner_id), Document.id == document_id)
    )
    if version is None:
        raise NotFound("no document with this id")
    return version


def read_through(
    session: Session,
    *,
    owner_id: uuid.UUID,
    document_id: uuid.UUID,
    cache: VersionedCache,
    render: Callable[[Document], bytes],
) -> tuple[int, bytes]:
    """The current version and its rendering, from `cache` when it holds exactly the
    version PostgreSQL has now, so the answer is never older than the last committed write."""
    if not cache.enabled:
        document = get(session, owner_id=owner_id, document_id=document_id)
        return document.version, render(document)
    version = current_version(session, owner_id=owner_id, document_id=document_id)
    body = cache.get(document_id, version)
    if body is None:
        document = get(session, owner_id=owner_id, document_id=document_id)
        version, body = document.version, render(document)
        cache.put(document_id, version, body)
    return version, body


def update(
    session: Session,
    *,
    owner_id: uuid.UUID,
    document_id: uuid.UUID,
    fields: dict[str, Any],
    limits: Limits,
    condition: VersionCondition | None = None,
    correlation_id: str | None = None,
) -> Document:
    """Change the given fields and bump the version; `condition` (If-Match) guards lost updates.

    The row lock serializes writers: of two updates of the same version, the second waits,
    then sees the first one's version and fails its precondition.
    """
    _check_limits(fields, limits)
    document = _lock(session, owner_id=owner_id, document_id=document_id, condition=condition)
    for name, value in _columns(fields).items():
        setattr(document, name, value)
    document.version += 1
    session.flush()
    _record(session, document, EventType.DOCUMENT_UPDATED, correlation_id)
    return document


def delete(
    session: Session,
    *,
    owner_id: uuid.UUID,
    document_id: uuid.UUID,
    condition: VersionCondition | None = None,
    correlation_id: str | None = None,
) -> Document:
    """Soft delete: the document is 404 from now on; its history stays readable."""
    document = _lock(session, owner_id=owner_id, document_id=document_id, condition=condition)
    document.deleted_at = func.now()
    document.version += 1
    session.flush()
    _record(session, document, EventType.DOCUMENT_DELETED, correlation_id)
    return document


def get_version(
    session: Session, *, owner_id: uuid.UUID, document_id: uuid.UUID, version: int
) -> DocumentVersion:
    """A version as it was, from its event; also for a deleted document."""
    created_at = _created_at(session, owner_id=owner_id, document_id=document_id)
    events = event_store.read_stream(
        session,
        owner_id=owner_id,
        stream=document_stream(document_id),
        from_version=version,
        limit=1,
    )
    if not events or events[0].version != version:
        raise NotFound(f"the document has no version {version}")
    event = events[0]
    if event.type == EventType.DOCUMENT_DELETED:
        raise NotFound(f"version {version} is the document's deletion")
    data = event.data
    return DocumentVersion(
        id=document_id,
        version=version,
        title=data["title"],
        content=data["content"],
        content_type=data["content_type"],
        metadata_=data["metadata"],
        created_at=created_at,
        updated_at=event.recorded_at,
    )


def history(
    session: Session,
    *,
    owner_id: uuid.UUID,
    document_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> Page[VersionSummary]:
    """The document's versions, oldest first, without their content; also once deleted."""
    _created_at(session, owner_id=owner_id, document_id=document_id)
    after = _decode_version_cursor(cursor)
    rows = session.execute(
        select(
            Event.version,
            Event.type,
            Event.data["title"].astext,
            Event.data["content_type"].astext,
            Event.data["metadata"],
            Event.recorded_at,
        )
        .where(Event.owner_id == owner_id, Event.stream == document_stream(document_id))
        .where(Event.version > after)
        .order_by(Event.version)
        .limit(limit + 1)
    ).all()
    items = [VersionSummary(*row) for row in rows[:limit]]
    next_cursor = str(items[-1].version) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def list_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    q: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Page[Document]:
    """The owner's live documents without their content: newest first, or with `q` the
    matches of that web-search-style query, best first (a title match weighs more than a
    content match). `metadata` keeps documents whose metadata contains that object."""
    query = select(Document).options(defer(Document.content)).where(*_live(owner_id))
    if metadata:
        query = query.where(Document.metadata_.contains(metadata))
    if q is not None:
        return _search_page(session, query, q=q, limit=limit, cursor=cursor)
    return newest_first(session, query, Document.id, limit=limit, cursor=cursor)


def _search_page(
    session: Session, query: Select[tuple[Document]], *, q: str, limit: int, cursor: str | None
) -> Page[Document]:
    tsquery = func.websearch_to_tsquery(SEARCH_CONFIG, func.normalize(q, SEARCH_FORM))
    rank = func.ts_rank_cd(Document.search_vector, tsquery)
    ranked = query.add_columns(rank).where(Document.search_vector.op("@@")(tsquery))
    if cursor:
        after_rank, after_id = _decode_rank_cursor(cursor)
        # Ranks are float4: compare as float4, or a rank would not equal itself.
        bound = cast(after_rank, REAL)
        ranked = ranked.where(or_(rank < bound, and_(rank == bound, Document.id < after_id)))
    try:
        rows = session.execute(
            ranked.order_by(rank.desc(), Document.id.desc()).limit(limit + 1)
        ).all()
    except DBAPIError as error:
        if _TSQUERY_TOO_DEEP not in str(error.orig):
            raise
        # PostgreSQL's parser of `websearch_to_tsquery` refuses some runs of operators (33
        # dashes, "- " 40 times) with an internal error; it was a 500, to agents a failure.
        raise InvalidInput(
            problems=[FieldProblem("q", "too many operators in a row ('-', 'or')", "query")]
        ) from None
    items = [document for document, _ in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last, last_rank = rows[limit - 1]
        next_cursor = _encode_rank_cursor(last_rank, last.id)
    return Page(items=items, next_cursor=next_cursor)


_TSQUERY_TOO_DEEP = "tsquery stack too small"


def _encode_rank_cursor(rank: float, document_id: uuid.UUID) -> str:
    raw = struct.pack(">f", rank) + document_id.bytes
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_rank_cursor(cursor: str) -> tuple[float, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if len(raw) != 20:
            raise ValueError(cursor)
        (rank,) = struct.unpack(">f", raw[:4])
        # Ranks are finite and never below 0: NaN, which sorts above every rank in
        # PostgreSQL, made a forged cursor answer the first page again.
        if not (math.isfinite(rank) and rank >= 0):
            raise ValueError(cursor)
        return rank, uuid.UUID(bytes=raw[4:])
    except (ValueError, binascii.Error):
        raise _bad_cursor() from None


def _decode_version_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    after = parse_counter(cursor, MAX_VERSION)
    if after is None:
        raise _bad_cursor()
    return after


def _bad_cursor() -> InvalidInput:
    return InvalidInput(
        problems=[FieldProblem("cursor", "not a cursor this API returned", "query")]
    )


def _live(owner_id: uuid.UUID) -> tuple[Any, ...]:
    return (Document.owner_id == owner_id, Document.deleted_at.is_(None))


def _created_at(session: Session, *, owner_id: uuid.UUID, document_id: uuid.UUID) -> dt.datetime:
    """The creation time of the owner's document, deleted or not; `NotFound` otherwise."""
    created_at = session.scalar(
        select(Document.created_at).where(Document.id == document_id, Document.owner_id == owner_id)
    )
    if created_at is None:
        raise NotFound("no document with this id")
    return created_at


def _lock(
    session: Session,
    *,
    owner_id: uuid.UUID,
    document_id: uuid.UUID,
    condition: VersionCondition | None,
) -> Document:
    document = session.scalar(
        select(Document).where(*_live(owner_id), Document.id == document_id).with_for_update()
    )
    if document is None:
        raise NotFound("no document with this id")
    preconditions.check(condition, "document", document.version)
    return document


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"not document fields: {sorted(unknown)}")
    return {("metadata_" if name == "metadata" else name): v for name, v in fields.items()}


def _check_limits(fields: dict[str, Any], limits: Limits) -> None:
    content = fields.get("content")
    if content is not None:
        size = len(content.encode("utf-8"))
        if size > limits.max_content_bytes:
            raise ContentTooLarge(
                f"content is {size} bytes in UTF-8; at most {limits.max_content_bytes} are allowed",
                extra={"max_content_bytes": limits.max_content_bytes},
            )
    problems = []
    title = fields.get("title")
    if title is not None and len(title) > limits.max_title_length:
        problems.append(
            FieldProblem("title", f"must be at most {limits.max_title_length} characters")
        )
    metadata = fields.get("metadata")
    if metadata is not None and len(orjson.dumps(metadata)) > limits.max_metadata_bytes:
        problems.append(
            FieldProblem("metadata", f"must be at most {limits.max_metadata_bytes} bytes as JSON")
        )
    if problems:
        raise InvalidInput(problems=problems)


def _record(
    session: Session,
    document: Document,
    event_type: EventType,
    correlation_id: str | None,
    event_id: uuid.UUID | None = None,
) -> None:
    """Append the version's event; the stream must be exactly one version behind."""
    data: dict[str, Any] = {"document_id": str(document.id), "version": document.version}
    if event_type != EventType.DOCUMENT_DELETED:
        data |= {
            "title": document.title,
            "content": document.content,
            "content_type": document.content_type,
            "metadata": document.metadata_,
        }
    event_store.append(
        session,
        owner_id=document.owner_id,
        stream=document_stream(document.id),
        events=[
            NewEvent(
                event_type,
                data,
                {"correlation_id": correlation_id} if correlation_id else {},
                event_id,
            )
        ],
        expected_version=document.version - 1,
    )
    # The server-side values for the answer, without reading the content back.
    session.refresh(document, ["created_at", "updated_at", "deleted_at"])
