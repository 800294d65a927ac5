"""API keys: created (the key shown once), listed without keys, revoked."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint

from api.auth import current_principal, require_bearer_token
from api.idempotent import refuses_key
from api.openapi import declares
from api.preconditions import check_on_create, check_without_etag
from api.representations import NO_STORE
from api.request_context import db
from api.schemas.api_keys import ApiKeyIn, ApiKeyOut, NewApiKeyOut
from api.schemas.common import PageOut, PageQuery
from api.spec_parts import CREATE_CONDITIONS, UNVERSIONED_CONDITIONS
from models import ApiKey
from services import api_keys

bp = APIBlueprint("api_keys", __name__, url_prefix="/v1/api-keys", tag="API keys")
# A person's token, not a key: a leaked key must not be able to mint or revoke keys.
bp.before_request(require_bearer_token)


def api_key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
    }


@bp.post("")
@bp.input(ApiKeyIn, arg_name="body")
@refuses_key
@bp.output(NewApiKeyOut, status_code=201)
@bp.doc(
    summary="Create an API key; the answer is the only time the key is shown",
    description="Send it as `X-API-Key: <key>`; it acts as the user who created it.",
    security="BearerAuth",
    responses=[201, 409, 412, 422],
)
@declares(headers={201: ["Location"]}, request_headers=CREATE_CONDITIONS)
def create_key(body: ApiKeyIn):  # type: ignore[no-untyped-def]
    check_on_create("/v1/api-keys", "a key")
    new = api_keys.create(db(), owner_id=current_principal().user_id, name=body.name)
    db().refresh(new.row)  # created_at comes from the database
    headers = {"Location": f"/v1/api-keys/{new.row.id}", **NO_STORE}
    return {**api_key_json(new.row), "key": new.key}, 201, headers


@bp.get("")
@bp.input(PageQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(summary="The caller's live API keys, newest first, without the keys", security="BearerAuth")
def list_keys(query: PageQuery):  # type: ignore[no-untyped-def]
    page = api_keys.list_page(
        db(), owner_id=current_principal().user_id, limit=query.limit, cursor=query.cursor
    )
    return {"items": [api_key_json(k) for k in page.items], "next_cursor": page.next_cursor}


@bp.get("/<uuid:key_id>")
@bp.output(ApiKeyOut)
@bp.doc(summary="One live API key, without the key", security="BearerAuth", responses=[200, 404])
def get_key(key_id: uuid.UUID):  # type: ignore[no-untyped-def]
    return api_key_json(api_keys.get(db(), owner_id=current_principal().user_id, key_id=key_id))


@bp.delete("/<uuid:key_id>")
@bp.doc(
    summary="Revoke an API key at once",
    security="BearerAuth",
    responses=[204, 404, 412],
)
@declares(request_headers=UNVERSIONED_CONDITIONS)
def revoke_key(key_id: uuid.UUID):  # type: ignore[no-untyped-def]
    api_keys.revoke(db(), owner_id=current_principal().user_id, key_id=key_id)
    check_without_etag()
    return "", 204
