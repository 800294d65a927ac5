"""Bearer tokens: one pinned algorithm, short access tokens, revocation in Redis.

flask-jwt-extended signs and decodes; every failure it can raise is turned into one plain
401 problem here, so a client never learns which check failed.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, current_app, g, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    decode_token,
    get_jwt,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError

from services.errors import Overloaded, Unauthorized

ALGORITHM = "HS256"
_REVOKED_PREFIX = "conveyor:revoked:"


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str


def install(app: Flask, *, secret: str, access_ttl_s: int, refresh_ttl_s: int) -> None:
    app.config.update(
        JWT_SECRET_KEY=secret,
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ACCESS_TOKEN_EXPIRES=dt.timedelta(seconds=access_ttl_s),
        JWT_REFRESH_TOKEN_EXPIRES=dt.timedelta(seconds=refresh_ttl_s),
        JWT_DECODE_LEEWAY=0,
    )
    jwt = JWTManager(app)
    jwt.token_in_blocklist_loader(lambda _header, payload: is_revoked(payload["jti"]))


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


def require_access_token() -> None:
    """Authenticate the request or raise a 401; sets `g.principal`."""
    payload = _verified(refresh=False)
    g.principal = Principal(uuid.UUID(payload["sub"]), payload.get("role", "user"))


def require_refresh_token() -> dict[str, Any]:
    return _verified(refresh=True)


def _verified(*, refresh: bool) -> dict[str, Any]:
    try:
        verify_jwt_in_request(refresh=refresh)
    except (JWTExtendedException, PyJWTError):
        raise Unauthorized(_missing_or_invalid()) from None
    except redis.RedisError:
        raise Overloaded("token revocation cannot be checked right now", retry_after_s=2) from None
    return get_jwt()


def _missing_or_invalid() -> str:
    if "Authorization" not in request.headers:
        return "send Authorization: Bearer <access token>"
    return "the token is invalid, expired or revoked"


def issue_tokens(principal: Principal, *, with_refresh: bool = True) -> dict[str, Any]:
    claims = {"role": principal.role}
    identity = str(principal.user_id)
    body: dict[str, Any] = {
        "access_token": create_access_token(identity=identity, additional_claims=claims),
        "token_type": "Bearer",
        "expires_in": int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
    }
    if with_refresh:
        body["refresh_token"] = create_refresh_token(identity=identity, additional_claims=claims)
    return body


def revoke_current() -> None:
    payload = get_jwt()
    _revoke(payload["jti"], payload["exp"])


def revoke_encoded(token: str, *, owner: uuid.UUID) -> None:
    """Revoke a refresh token sent in a logout body; another user's token is refused."""
    try:
        payload = decode_token(token)
    except (JWTExtendedException, PyJWTError):
        raise Unauthorized("the refresh token is invalid, expired or revoked") from None
    if payload.get("sub") != str(owner):
        raise Unauthorized("the refresh token is invalid, expired or revoked")
    _revoke(payload["jti"], payload["exp"])


def is_revoked(jti: str) -> bool:
    return bool(_redis().exists(_REVOKED_PREFIX + jti))


def _revoke(jti: str, expires_at: int) -> None:
    # Kept only as long as the token would have been valid; after that it is refused anyway.
    ttl = max(1, expires_at - int(time.time()))
    _redis().set(_REVOKED_PREFIX + jti, 1, ex=ttl)


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["conveyor"].redis
    return client
