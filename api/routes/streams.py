"""What the caller's streams are at, without reading their events."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint

from api.auth import current_principal, require_access_token
from api.openapi import declares
from api.preconditions import conditional_read
from api.representations import etag, stream_json
from api.request_context import db, single_statement_db
from api.schemas.common import PageOut
from api.schemas.events import StreamListQuery, StreamOut
from api.stream_names import check_stream
from services import streams

bp = APIBlueprint("streams", __name__, url_prefix="/v1/streams", tag="Events")
bp.before_request(require_access_token)


@bp.get("")
@bp.input(StreamListQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(
    summary="The caller's streams, by name",
    description="Each: `stream`, `version` (of its last event), `created_at` and "
    "`updated_at` (when its first and last events were recorded). In byte order of the "
    "names (`A` before `a`), which pages stably while streams are added and appended to; "
    "`cursor` is the last name of the previous page. `prefix` keeps the names that start "
    "with it. Streams the server writes (`job-`, `document-`) are not listed: find them "
    "from their jobs and documents, and read them with `GET /v1/streams/<stream>`.",
)
def list_streams(query: StreamListQuery):  # type: ignore[no-untyped-def]
    page = streams.list_page(
        db(),
        owner_id=current_principal().user_id,
        limit=query.limit,
        cursor=query.cursor,
        prefix=query.prefix,
    )
    return {"items": [stream_json(s) for s in page.items], "next_cursor": page.next_cursor}


@bp.get("/<stream>")
@bp.output(StreamOut)
@bp.doc(
    summary="One stream's version, without its events",
    description="Any stream of the caller's with an event, the server's (`job-<id>`, "
    "`document-<id>`) too. The ETag is the version: `If-None-Match` with it answers 304 "
    "while nothing was appended, and `If-Match` without it 412.",
    responses=[200, 304, 404, 412, 422],
)
@declares(
    headers={200: ["ETag"], 304: ["ETag"]},
    request_headers=["If-Match-Read", "If-None-Match-Read"],
)
def get_stream(stream: str) -> Any:
    check_stream(stream, writing=False)
    info = streams.get(single_statement_db(), owner_id=current_principal().user_id, stream=stream)
    return conditional_read("stream", info.version) or (
        stream_json(info),
        200,
        {"ETag": etag(info.version)},
    )
