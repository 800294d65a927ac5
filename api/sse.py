"""Server-sent events: the wire format and a response that streams without buffering."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, request

from api.json_provider import dumps_bytes
from services.errors import FieldProblem, InvalidInput
from services.inputs import parse_counter

KEEPALIVE = b": keepalive\n\n"
# The first bytes of a stream with no event to send yet: servers send the status line and
# headers with the body's first bytes (gunicorn does), so without them the client waited
# for its 200 until the first event or keepalive.
OPEN = b": open\n\n"
MIMETYPE = "text/event-stream"


def wants_stream() -> bool:
    return request.accept_mimetypes.best_match(["application/json", MIMETYPE]) == MIMETYPE


def last_event_id(maximum: int) -> int:
    """Where a reconnecting client left off: `Last-Event-ID` (one of the ids we sent, up to
    `maximum`), else 0 (the beginning). A value that is no such id is a 422 before any byte
    is streamed: once the stream has begun, an error can no longer become a problem."""
    value = request.headers.get("Last-Event-ID", "").strip()
    if not value:
        return 0
    after = parse_counter(value, maximum)
    if after is None:
        raise _not_sent()
    return after


def check_sent(sent: bool) -> None:
    """A 422, as for any id we did not send, unless the caller found that this tail could
    have sent the `Last-Event-ID`. One past the last event of a stream (another stream's
    id, a client's own count) made the tail wait for the event after it and skip, unsaid,
    every one up to it; a feed's position of no event of the owner's was named as the
    query's `after`, which the client had not sent."""
    if not sent:
        raise _not_sent()


def _not_sent() -> InvalidInput:
    return InvalidInput(
        problems=[FieldProblem("Last-Event-ID", "expected an event id we sent", "header")]
    )


def frame(event_id: int, event_type: str, data: Any) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event_type.encode(), dumps_bytes(data))


def streaming_response(chunks: Iterator[bytes]) -> Response:
    response = Response(chunks, mimetype=MIMETYPE)
    response.headers["Cache-Control"] = "no-cache"
    # Tells nginx-style proxies not to buffer the stream.
    response.headers["X-Accel-Buffering"] = "no"
    return response
