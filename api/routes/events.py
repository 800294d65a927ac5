"""Streams, the owner's feed, and batch ingestion."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from apiflask import APIBlueprint
from flask import Response, g
from sqlalchemy.orm import Session

from api import live, sse
from api.auth import current_principal, require_access_token
from api.idempotent import idempotent
from api.json_provider import dumps_bytes
from api.openapi import declares
from api.preconditions import check_on_create, version_condition
from api.representations import etag, event_json, receipt_json
from api.request_context import db, end_session, single_statement_db
from api.runtime import current_runtime, live_page_max_bytes, page_max_bytes
from api.schemas.common import PageOut
from api.schemas.events import (
    AppendIn,
    AppendOut,
    BatchIn,
    EventIn,
    FeedQuery,
    ReceiptOut,
    StreamQuery,
    feed_types,
)
from api.spec_parts import CREATE_CONDITIONS
from api.stream_names import check_stream, stream_problem
from models import Event
from services import event_batches, event_store
from services.after_commit import events_key
from services.errors import FieldProblem, InvalidInput
from services.event_store import NewEvent
from services.inputs import MAX_POSITION, MAX_VERSION

bp = APIBlueprint("events", __name__, url_prefix="/v1", tag="Events")
bp.before_request(require_access_token)


@bp.post("/streams/<stream>/events")
@bp.input(AppendIn, arg_name="body")
@idempotent
@bp.output(AppendOut, status_code=201)
@bp.doc(
    summary="Append events to a stream",
    description="`expected_version` (a version, `any` or `no_stream`) guards against "
    "concurrent writers: 409 with `current_version` when it does not match. Sending the same "
    "events (same `event_id`s) again writes nothing and answers as the first time. "
    "`If-Match` / `If-None-Match` are checked against the stream's ETag, its version, as "
    "`GET /v1/streams/<stream>` sends it (412, with `current_version` when the stream has "
    "events); a stream without events has none, so no `If-Match` holds for it and "
    "`If-None-Match: *` appends only to a new stream. With an "
    "`Idempotency-Key`, a retry of the same request within 24 h gets the first answer "
    "again and appends nothing, events without ids too. The answer's `ETag` is the "
    "stream's after these events (`last_version`): send it in the next `If-Match`.",
    responses=[201, 409, 412, 422],
)
@declares(
    headers={201: ["ETag", "Idempotent-Replayed"]},
    request_headers=["Idempotency-Key", "If-Match-Append", "If-None-Match-Append"],
)
def append(stream: str, body: AppendIn):  # type: ignore[no-untyped-def]
    check_stream(stream, writing=True)
    condition = version_condition()
    events = [_new_event(e) for e in body.events]
    one_statement = event_store.appends_in_one_statement(events, condition)
    # With an Idempotency-Key, its session is open: the statement runs in its transaction,
    # and the key is stored with the events (api/idempotent.py).
    unit = single_statement_db() if one_statement else db()
    result = event_store.append(
        unit,
        owner_id=current_principal().user_id,
        stream=stream,
        events=events,
        expected_version=body.expected_version,
        condition=condition,
        max_data_bytes=current_runtime().settings.event_max_data_bytes,
    )
    return (
        {
            "first_version": result.first_version,
            "last_version": result.last_version,
            "positions": result.positions,
        },
        201,
        # The stream's tag after these events, as GET /v1/streams/<stream> would send it,
        # so that a writer chaining conditional appends need not read between them.
        {"ETag": etag(result.last_version)},
    )


@bp.get("/streams/<stream>/events")
@bp.input(StreamQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(
    summary="A stream's events in version order",
    description="Pages by `cursor` (the last page's `next_cursor`) or, the same, "
    "`from_version`. `direction=backward` reads newest first, from `from_version` (left "
    "out: the last event) down; its `next_cursor` is the next version down, so send "
    "`direction=backward` with it. With `Accept: text/event-stream`, tails the stream live "
    "(forward only) from the version after `Last-Event-ID` (or `from_version`).",
)
@declares(request_headers=["Last-Event-ID"], event_stream=True)
def read_stream(stream: str, query: StreamQuery):  # type: ignore[no-untyped-def]
    check_stream(stream, writing=False)
    owner_id = current_principal().user_id
    backward = query.direction == "backward"
    if sse.wants_stream():
        if backward:
            raise InvalidInput(
                problems=[FieldProblem("direction", "a live tail reads forward only", "query")]
            )
        after = sse.last_event_id(MAX_VERSION)
        if after:
            last = event_store.last_version(db(), owner_id=owner_id, stream=stream)
            sse.check_sent(after <= last)
        return _tail_stream(owner_id, stream, after or query.from_version - 1)
    rows, more = event_store.stream_page(
        db(),
        owner_id=owner_id,
        stream=stream,
        from_version=query.from_version,
        limit=query.limit,
        max_bytes=page_max_bytes(),
        backward=backward,
    )
    return {
        "items": [event_json(e) for e in rows],
        "next_cursor": str(rows[-1].version + (-1 if backward else 1)) if more else None,
    }


@bp.get("/events")
@bp.input(FeedQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(
    summary="The caller's global feed",
    description="Page with `after=<position>`: the position of the last event you received, "
    "which `next_cursor` gives. Events come in commit order, so positions of concurrent "
    "writers interleave: resume from the last event's position, not the largest one. A "
    "reader that pages this way never skips an event, even one whose transaction commits "
    "late. A feed has no end: `next_cursor` is null only on an empty page. `type` filters "
    "by comma-separated event types. With "
    "`Accept: text/event-stream`, tails the feed live from `Last-Event-ID` (a position).",
)
@declares(request_headers=["Last-Event-ID"], event_stream=True)
def feed(query: FeedQuery):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id
    types = feed_types(query.type)
    live = sse.wants_stream()
    # The client's cursor is checked once, here: a tail goes on from the feed's own.
    resumed = sse.last_event_id(MAX_POSITION) if live else 0
    if resumed:
        sse.check_sent(event_store.is_feed_position(db(), owner_id=owner_id, position=resumed))
    elif query.after:
        event_store.check_feed_position(db(), owner_id=owner_id, after=query.after)
    if live:
        return _tail_feed(owner_id, types, resumed or query.after)
    # A feed page's cursor is its last event, whether or not more follow.
    rows, _ = event_store.feed_page(
        db(),
        owner_id=owner_id,
        after=query.after,
        types=types,
        limit=query.limit,
        max_bytes=page_max_bytes(),
    )
    return {
        "items": [event_json(e) for e in rows],
        "next_cursor": str(rows[-1].position) if rows else None,
    }


@bp.post("/events/batch")
@bp.input(BatchIn, arg_name="body")
@idempotent
@bp.output(ReceiptOut, status_code=202)
@bp.doc(
    summary="Accept up to 1000 events for several streams; workers persist them",
    description="The answer's receipt reports `pending`, then `persisted` (with versions and "
    "positions) or `rejected` (with a reason per event). A batch is persisted whole or not "
    "at all. Events are idempotent by `event_id`: one appended before to the same stream "
    "with the same type, data and metadata is a `duplicate`; with anything else, or to "
    "another stream, it is `rejected`. `If-Match` and `If-None-Match` are evaluated against "
    "the collection of batches, which has no ETag (as on every create): a stream's version "
    "is no tag of it. With an `Idempotency-Key`, a retry of the same request within 24 h "
    "gets the first receipt again (as it was then) and accepts nothing.",
    responses=[202, 409, 412, 422],
)
@declares(
    headers={202: ["Location", "Idempotent-Replayed"]},
    request_headers=["Idempotency-Key", *CREATE_CONDITIONS],
)
def batch(body: BatchIn):  # type: ignore[no-untyped-def]
    check_on_create("/v1/events/batch", "a batch")
    # Every wrong event at once, as the schema's own errors come.
    problems = [
        problem
        for i, event in enumerate(body.events)
        if (problem := stream_problem(event.stream, writing=True, field=f"events.{i}.stream"))
    ]
    events = [(e.stream, _new_event(e)) for e in body.events]
    limit = current_runtime().settings.event_max_data_bytes
    problems += event_store.size_problems([event for _, event in events], limit)
    if problems:
        raise InvalidInput(problems=problems)
    accepted = event_batches.accept(
        db(),
        owner_id=current_principal().user_id,
        events=events,
        correlation_id=g.request_id,
    )
    db().flush()
    body_bytes = dumps_bytes(receipt_json(accepted))
    response = Response(body_bytes, status=202, mimetype="application/json")
    response.headers["Location"] = f"/v1/events/receipts/{accepted.id}"
    return response


@bp.get("/events/receipts/<uuid:receipt_id>")
@bp.output(ReceiptOut)
@bp.doc(summary="The state of an accepted batch", responses=[200, 404])
def receipt(receipt_id: uuid.UUID):  # type: ignore[no-untyped-def]
    found = event_batches.get(db(), owner_id=current_principal().user_id, batch_id=receipt_id)
    return receipt_json(found)


def _tail_stream(owner_id: uuid.UUID, stream: str, after: int) -> Response:
    max_bytes = live_page_max_bytes()

    def fetch(session: Session, after_version: int, limit: int) -> tuple[list[Event], bool]:
        return event_store.stream_page(
            session,
            owner_id=owner_id,
            stream=stream,
            from_version=after_version + 1,
            limit=limit,
            max_bytes=max_bytes,
        )

    return _tail(owner_id, after, fetch, cursor=lambda event: event.version)


def _tail_feed(owner_id: uuid.UUID, types: list[str], after: int) -> Response:
    max_bytes = live_page_max_bytes()

    def fetch(session: Session, after_position: int, limit: int) -> tuple[list[Event], bool]:
        return event_store.feed_page(
            session,
            owner_id=owner_id,
            after=after_position,
            types=types,
            limit=limit,
            max_bytes=max_bytes,
        )

    return _tail(owner_id, after, fetch, cursor=lambda event: event.position)


def _tail(
    owner_id: uuid.UUID,
    after: int,
    fetch: Callable[[Session, int, int], tuple[list[Event], bool]],
    *,
    cursor: Callable[[Event], int],
) -> Response:
    """Tail the owner's events live; `cursor` is what `Last-Event-ID` carries. `fetch`
    gives a page (bounded by count and by bytes) and whether more follow it."""
    runtime = current_runtime()
    end_session()

    def read(after_cursor: int, limit: int) -> live.Page:
        with runtime.session_factory() as session:
            rows, more = fetch(session, after_cursor, limit)
        frames = [(cursor(event), event.type, event_json(event)) for event in rows]
        return live.Page(frames, full=more)

    return live.open_tail(
        runtime.notifier,
        events_key(owner_id),
        read,
        after=after,
        max_s=runtime.settings.max_stream_s,
        send_timeout_s=runtime.settings.web_send_timeout_s,
    )


def _new_event(event: EventIn) -> NewEvent:
    return NewEvent(event.type, event.data, event.metadata, event.event_id)
