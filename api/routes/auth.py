from __future__ import annotations

import uuid

from apiflask import APIBlueprint

from api.auth import (
    Principal,
    current_principal,
    issue_tokens,
    require_access_token,
    require_bearer_token,
    revoke_current,
    revoke_encoded,
    rotate_refresh_token,
)
from api.openapi import declares
from api.representations import user_json
from api.request_context import db, optional_body, takes_optional_body
from api.runtime import current_runtime
from api.schemas.auth import Credentials, LoginIn, LogoutIn, TokensOut, UserOut
from services import users
from services.errors import Forbidden, NotFound, Unauthorized

bp = APIBlueprint("auth", __name__, url_prefix="/v1/auth", tag="Authentication")


@bp.post("/register")
@bp.input(Credentials, arg_name="body")
@bp.output(UserOut, status_code=201)
@bp.doc(
    summary="Create an account",
    description="403 when registration is turned off on this server (REGISTRATION_ENABLED).",
    security=[],
    responses=[201, 403, 409, 422],
)
@declares(headers={201: ["Location"]})
def register(body: Credentials):  # type: ignore[no-untyped-def]
    if not current_runtime().settings.registration_enabled:
        raise Forbidden("registration is turned off on this server")
    user = users.register(
        db(), email=body.email, password=body.password, passwords=current_runtime().passwords
    )
    # The account is read at /v1/auth/me, with the tokens a login gives.
    return user_json(user), 201, {"Location": "/v1/auth/me"}


@bp.post("/login")
@bp.input(LoginIn, arg_name="body")
@bp.output(TokensOut)
@bp.doc(summary="Exchange email and password for tokens", security=[], responses=[200, 401])
def login(body: LoginIn):  # type: ignore[no-untyped-def]
    user = users.authenticate(
        db(), email=body.email, password=body.password, passwords=current_runtime().passwords
    )
    if user is None:
        raise Unauthorized("wrong email or password")
    return issue_tokens(Principal(user.id, user.role))


@bp.post("/refresh")
@bp.output(TokensOut)
@bp.doc(
    summary="New tokens for a refresh token (sent as the bearer token), which is retired",
    description="Answers a new access token and a new refresh token; use the new refresh "
    "token next time. The presented one is retired: sent again within "
    "REFRESH_REUSE_GRACE_S (10 s by default) of its refresh, and before its successor has "
    "been used, it is answered the same new refresh token (a retry after a lost answer); "
    "sent again later, it is taken for a stolen copy and every token descended from the "
    "same login, refresh and access tokens alike, is revoked (401): log in again.",
    security="BearerAuth",
    responses=[200, 401],
)
def refresh():  # type: ignore[no-untyped-def]
    payload, successor = rotate_refresh_token()
    user = users.get(db(), uuid.UUID(payload["sub"]))
    if user is None:
        raise Unauthorized("the token is invalid, expired or revoked")
    # The role as it is now, not as it was when the refresh token was issued.
    return issue_tokens(Principal(user.id, user.role), successor)


@bp.post("/logout")
@bp.doc(
    summary="End the presented token's login, and that of a refresh token given in the body",
    description="Revokes every token of the presented token's login (its refresh tokens, "
    'earlier and later, and their access tokens). The body is optional: `{"refresh_token": '
    '"..."}` ends that refresh token\'s login too (another login of the same account). An '
    "API key is revoked with "
    "`DELETE /v1/api-keys/<id>` instead.",
    security="BearerAuth",
    responses=[204, 401, 422],
)
@takes_optional_body(LogoutIn)
def logout():  # type: ignore[no-untyped-def]
    require_bearer_token()
    body = optional_body(LogoutIn)
    if body.refresh_token:
        revoke_encoded(body.refresh_token, owner=current_principal().user_id)
    revoke_current()
    return "", 204


@bp.get("/me")
@bp.output(UserOut)
@bp.doc(summary="The account behind the token")
def me():  # type: ignore[no-untyped-def]
    require_access_token()
    user = users.get(db(), current_principal().user_id)
    if user is None:
        raise NotFound("this account no longer exists")
    return user_json(user)
