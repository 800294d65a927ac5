from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import Response, current_app, g
from flask.blueprints import BlueprintSetupState

from api.auth import current_principal, require_access_token
from api.idempotent import idempotent
from api.json_provider import dumps_bytes
from api.openapi import declares
from api.preconditions import check_on_create, conditional_read, version_condition
from api.representations import (
    document_json,
    document_summary_json,
    document_version_json,
    etag,
)
from api.request_context import db
from api.runtime import current_runtime
from api.schemas.common import PageOut, PageQuery
from api.schemas.documents import (
    DocumentIn,
    DocumentListQuery,
    DocumentOut,
    DocumentPatch,
    DocumentQuery,
)
from api.spec_parts import CREATE_CONDITIONS
from models import Document
from services import documents
from services.cache import VersionedCache

bp = APIBlueprint("documents", __name__, url_prefix="/v1/documents", tag="Documents")
bp.before_request(require_access_token)

CACHE = "conveyor.document_cache"


@bp.record_once
def _install_cache(state: BlueprintSetupState) -> None:
    settings = state.app.extensions["conveyor"].settings
    state.app.extensions[CACHE] = VersionedCache(settings.document_cache_max_bytes)


def _cache() -> VersionedCache:
    cache: VersionedCache = current_app.extensions[CACHE]
    return cache


def _limits() -> documents.Limits:
    return current_runtime().settings.document_limits()


def _written(document: Document, status: int = 200) -> tuple[dict[str, Any], int, dict[str, str]]:
    # This process's copy of the old version goes now; other processes' copies stop
    # matching the version that PostgreSQL holds (services/cache.py).
    _cache().discard(document.id)
    headers = {"ETag": etag(document.version)}
    if status == 201:
        headers["Location"] = f"/v1/documents/{document.id}"
    return document_json(document), status, headers


_CREATE_NOTE = (
    "A document gets a new id from the server, so `If-None-Match: *` (create only if nothing "
    "is there) never holds: the collection exists. It is a 412, and nothing is made."
)


@bp.post("")
@bp.input(DocumentIn, arg_name="body")
@idempotent
@bp.output(DocumentOut, status_code=201)
@bp.doc(summary="Create a document", description=_CREATE_NOTE, responses=[201, 409, 412, 413, 422])
@declares(
    headers={201: ["Location", "ETag", "Idempotent-Replayed"]},
    request_headers=["Idempotency-Key", *CREATE_CONDITIONS],
)
def create_document(body: DocumentIn):  # type: ignore[no-untyped-def]
    check_on_create("/v1/documents", "a document")
    document = documents.create(
        db(),
        owner_id=current_principal().user_id,
        fields=body.model_dump(),
        limits=_limits(),
        correlation_id=g.request_id,
    )
    return _written(document, 201)


@bp.get("")
@bp.input(DocumentListQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(
    summary="The caller's documents, without content: newest first, or best first with `q`",
    description="`q` searches titles and contents (web-search syntax; a title match ranks "
    "above a content match). Text and query are compared in Unicode NFKC form (a decomposed "
    '"é" finds a precomposed one, a ligature or fullwidth letter its plain letters); accents '
    'are not ignored. `metadata` is a JSON object, e.g. `{"project": "apollo"}`, that '
    "a document's metadata must contain.",
)
def list_documents(query: DocumentListQuery):  # type: ignore[no-untyped-def]
    page = documents.list_page(
        db(),
        owner_id=current_principal().user_id,
        limit=query.limit,
        cursor=query.cursor,
        q=query.q,
        metadata=query.metadata,
    )
    return {
        "items": [document_summary_json(d) for d in page.items],
        "next_cursor": page.next_cursor,
    }


@bp.get("/<uuid:document_id>")
@bp.input(DocumentQuery, location="query", arg_name="query")
@bp.output(DocumentOut)
@bp.doc(
    summary="One document; `?version=` reads a past version from its history",
    description="`If-None-Match` with the ETag of the version answered (the current one, or "
    "`?version=`'s) answers 304; `If-Match` without it, 412.",
    responses=[200, 304, 404, 412],
)
@declares(
    headers={200: ["ETag"], 304: ["ETag"]},
    request_headers=["If-Match-Read", "If-None-Match-Read"],
)
def get_document(document_id: uuid.UUID, query: DocumentQuery):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id
    if query.version is not None:
        past = documents.get_version(
            db(), owner_id=owner_id, document_id=document_id, version=query.version
        )
        return conditional_read("document", past.version) or (
            document_json(past),
            200,
            {"ETag": etag(past.version)},
        )
    version, body = documents.read_through(
        db(),
        owner_id=owner_id,
        document_id=document_id,
        cache=_cache(),
        render=lambda document: dumps_bytes(document_json(document)),
    )
    return conditional_read("document", version) or Response(
        body, mimetype="application/json", headers={"ETag": etag(version)}
    )


@bp.put("/<uuid:document_id>")
@bp.input(DocumentIn, arg_name="body")
@bp.output(DocumentOut)
@bp.doc(summary="Replace a document; bumps its version", responses=[200, 404, 412, 413, 422])
@declares(headers={200: ["ETag"]}, request_headers=["If-Match", "If-None-Match"])
def replace_document(document_id: uuid.UUID, body: DocumentIn):  # type: ignore[no-untyped-def]
    return _update(document_id, body.model_dump())


@bp.patch("/<uuid:document_id>")
@bp.input(DocumentPatch, arg_name="body")
@bp.output(DocumentOut)
@bp.doc(summary="Change some fields; bumps the version", responses=[200, 404, 412, 413, 422])
@declares(headers={200: ["ETag"]}, request_headers=["If-Match", "If-None-Match"])
def patch_document(document_id: uuid.UUID, body: DocumentPatch):  # type: ignore[no-untyped-def]
    return _update(document_id, body.model_dump(exclude_unset=True))


def _update(document_id: uuid.UUID, fields: dict[str, Any]):  # type: ignore[no-untyped-def]
    document = documents.update(
        db(),
        owner_id=current_principal().user_id,
        document_id=document_id,
        fields=fields,
        limits=_limits(),
        condition=version_condition(),
        correlation_id=g.request_id,
    )
    return _written(document)


@bp.delete("/<uuid:document_id>")
@bp.doc(summary="Delete a document; its history stays readable", responses=[204, 404, 412])
@declares(request_headers=["If-Match", "If-None-Match"])
def delete_document(document_id: uuid.UUID):  # type: ignore[no-untyped-def]
    document = documents.delete(
        db(),
        owner_id=current_principal().user_id,
        document_id=document_id,
        condition=version_condition(),
        correlation_id=g.request_id,
    )
    _cache().discard(document.id)
    return "", 204


@bp.get("/<uuid:document_id>/versions")
@bp.input(PageQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(
    summary="A document's versions from its event log, oldest first; also once deleted",
    description="Each entry: `version`, `type` (`document.created`, `document.updated`, "
    "`document.deleted`), `title`, `content_type`, `metadata`, `recorded_at`. Read a "
    "version's content with `GET /v1/documents/<id>?version=N`.",
    responses=[200, 404],
)
def list_versions(document_id: uuid.UUID, query: PageQuery):  # type: ignore[no-untyped-def]
    page = documents.history(
        db(),
        owner_id=current_principal().user_id,
        document_id=document_id,
        limit=query.limit,
        cursor=query.cursor,
    )
    return {
        "items": [document_version_json(v) for v in page.items],
        "next_cursor": page.next_cursor,
    }
