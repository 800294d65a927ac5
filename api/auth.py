"""Credentials: bearer tokens (one pinned algorithm, short access tokens, revocation in
Redis) and API keys (`X-API-Key`, services/api_keys.py). Both give the same `Principal`.

flask-jwt-extended signs and decodes; every failure it can raise is turned into one plain
401 problem here, so a client never learns which check failed.

`identify` runs for every `/v1` request before the rate limiter, so that limits count per
user; it refuses nobody. Routes that need a caller call `require_access_token` (usually as
their blueprint's `before_request`), which answers 401 (or 503) for what `identify` found.
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

from services import api_keys
from services.errors import Overloaded, Unauthorized

ALGORITHM = "HS256"
ISSUER = "conveyor"
# Claims every token we sign carries; a token without one is refused, signed or not.
REQUIRED_CLAIMS = ("sub", "jti", "iat", "nbf", "exp", "iss", "type")
_REVOKED_PREFIX = "conveyor:revoked:"
API_KEY_HEADER = "X-API-Key"
_CREDENTIALS_HINT = f"send Authorization: Bearer <access token> or {API_KEY_HEADER}: <key>"


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str
    api_key_id: uuid.UUID | None = None  # set when the caller presented an API key


def install(app: Flask, *, secret: str, access_ttl_s: int, refresh_ttl_s: int) -> None:
    app.config.update(
        JWT_SECRET_KEY=secret,
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ACCESS_TOKEN_EXPIRES=dt.timedelta(seconds=access_ttl_s),
        JWT_REFRESH_TOKEN_EXPIRES=dt.timedelta(seconds=refresh_ttl_s),
        JWT_DECODE_LEEWAY=0,
        JWT_ENCODE_ISSUER=ISSUER,
        JWT_DECODE_ISSUER=ISSUER,
    )
    jwt = JWTManager(app)
    jwt.token_in_blocklist_loader(lambda _header, payload: is_revoked(payload.get("jti")))
    jwt.token_verification_loader(lambda _header, payload: _complete(payload))
    app.before_request(identify)


def _complete(payload: dict[str, Any]) -> bool:
    """Every claim we sign is there, and `sub` is a user id (flask-jwt-extended itself only
    insists on `sub`, and PyJWT checks `exp` and `nbf` only when they are present)."""
    if any(claim not in payload for claim in REQUIRED_CLAIMS):
        return False
    try:
        uuid.UUID(str(payload["sub"]))
    except ValueError:
        return False
    return isinstance(payload["jti"], str) and payload["type"] in ("access", "refresh")


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


def identify() -> None:
    """Find the caller of a `/v1` request that presents a credential, before rate limits;
    a failure is kept for `require_access_token` to raise, so nobody is refused here."""
    if not request.path.startswith("/v1/") or "principal" in g:
        return
    if "Authorization" not in request.headers and API_KEY_HEADER not in request.headers:
        return
    try:
        g.principal = _authenticate()
    except (Unauthorized, Overloaded) as error:
        g.auth_error = error


def require_access_token() -> None:
    """Authenticate the request or raise a 401 (503 when revocation cannot be checked);
    sets `g.principal`."""
    if "principal" in g:
        return
    error: Unauthorized | Overloaded | None = g.get("auth_error")
    if error is not None:
        raise error
    g.principal = _authenticate()


def require_bearer_token() -> None:
    """Like `require_access_token`, but an API key is refused: managing API keys and
    logging out take a person's token, so a leaked key cannot mint or revoke keys."""
    require_access_token()
    if current_principal().api_key_id is not None:
        raise Unauthorized("this route takes Authorization: Bearer <access token>, not an API key")


def _authenticate() -> Principal:
    key = request.headers.get(API_KEY_HEADER)
    if key is None:
        payload = _verified(refresh=False)
        return Principal(uuid.UUID(payload["sub"]), payload.get("role", "user"))
    if "Authorization" in request.headers:
        raise Unauthorized(f"send Authorization or {API_KEY_HEADER}, not both")
    # Its own short transaction: the time of use is kept even when the request fails.
    with current_app.extensions["conveyor"].session_factory() as session:
        owner = api_keys.authenticate(session, key=key)
        session.commit()
    if owner is None:
        raise Unauthorized("the API key is invalid or revoked")
    return Principal(owner.user_id, owner.role, api_key_id=owner.key_id)


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
        return _CREDENTIALS_HINT
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
    if not _complete(payload) or payload["sub"] != str(owner):
        raise Unauthorized("the refresh token is invalid, expired or revoked")
    _revoke(payload["jti"], payload["exp"])


def is_revoked(jti: object) -> bool:
    if not isinstance(jti, str):
        return True  # a token we did not sign: refused, never a KeyError
    return bool(_redis().exists(_REVOKED_PREFIX + jti))


def _revoke(jti: str, expires_at: int) -> None:
    # Kept only as long as the token would have been valid; after that it is refused anyway.
    ttl = max(1, expires_at - int(time.time()))
    _redis().set(_REVOKED_PREFIX + jti, 1, ex=ttl)


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["conveyor"].redis
    return client
