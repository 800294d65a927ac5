"""Credentials: bearer tokens (one pinned algorithm, short access tokens, revocation
checked in Redis and kept in PostgreSQL, api/revocation_store.py) and API keys
(`X-API-Key`, services/api_keys.py). Both give the same `Principal`.

flask-jwt-extended signs tokens and decodes refresh tokens, which api/refresh_tokens.py
rotates; access tokens, which come with nearly every request, are checked by api/tokens.py
(verified claims remembered). Every failure is turned into one plain 401 problem here, so a
client never learns which check failed.

`identify` runs for every `/v1` request before the gate (api/gate.py), so that limits count
per user; it refuses nobody. The gate then asks Redis, in the same round trip as the rate
limit, whether the token was revoked, and tells `settle_revocation`. Routes that need a
caller call `require_access_token` (usually as their blueprint's `before_request`), which
answers 401 (or 503) for what `identify` and the gate found.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from flask import Flask, Request, current_app, g, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    decode_token,
)
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError

from api.refresh_tokens import (
    RefreshTokens,
    Retired,
    RevocationsUnloaded,
    Successor,
    access_family,
    family_of,
)
from api.revocation_store import RevocationStore
from api.tokens import ALGORITHM, ISSUER, AccessTokens, InvalidToken, complete
from services import api_keys
from services.errors import FieldProblem, InvalidInput, Overloaded, Unauthorized, Unavailable

log = structlog.get_logger("conveyor.api")

API_KEY_HEADER = "X-API-Key"
_CREDENTIALS_HINT = f"send Authorization: Bearer <access token> or {API_KEY_HEADER}: <key>"


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str
    api_key_id: uuid.UUID | None = None  # set when the caller presented an API key


def install(
    app: Flask,
    *,
    secret: str,
    access_ttl_s: int,
    refresh_ttl_s: int,
    refresh_reuse_grace_s: float,
    client: redis.Redis,
) -> None:
    app.config.update(
        JWT_SECRET_KEY=secret,
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        # No random `csrf` claim (for cookies, which we do not read): a retried refresh signs
        # the very token it signed before (api/refresh_tokens.py).
        JWT_COOKIE_CSRF_PROTECT=False,
        JWT_ACCESS_TOKEN_EXPIRES=dt.timedelta(seconds=access_ttl_s),
        JWT_REFRESH_TOKEN_EXPIRES=dt.timedelta(seconds=refresh_ttl_s),
        JWT_DECODE_LEEWAY=0,
        JWT_ENCODE_ISSUER=ISSUER,
        JWT_DECODE_ISSUER=ISSUER,
    )
    JWTManager(app)  # signs; tokens are checked by `_access_claims` and `_refresh_claims`
    app.extensions["conveyor.access_tokens"] = AccessTokens(secret)
    app.extensions["conveyor.refresh_tokens"] = RefreshTokens(
        client, ttl_s=refresh_ttl_s, reuse_grace_s=refresh_reuse_grace_s
    )
    app.before_request(identify)


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


# The hooks below run for every `/v1` request: each takes the request and `g` out of
# their proxies once and hands them on (a werkzeug LocalProxy lookup per attribute: twenty
# a job read in this module and the gate's hook before).


def identify() -> None:
    """Find the caller of a `/v1` request that presents a credential, before rate limits;
    a failure is kept for `require_access_token` to raise, so nobody is refused here."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    if not req.path.startswith("/v1/") or "principal" in ctx:
        return
    headers = req.headers
    if "Authorization" not in headers and API_KEY_HEADER not in headers:
        return
    try:
        ctx.principal = _authenticate(req, ctx)
    except (Unauthorized, Overloaded) as error:
        ctx.auth_error = error


def settle_revocation(revoked: bool | None) -> None:
    """What the gate found about the token `identify` accepted: not revoked (it stands),
    revoked (401), or unknown because Redis is away (503)."""
    g.pop("unchecked_jti", None)
    if revoked is False:
        return
    g.pop("principal", None)
    g.pop("claims", None)
    g.auth_error = (
        Unauthorized(_missing_or_invalid())
        if revoked
        else Unavailable("token revocation cannot be checked right now", retry_after_s=2)
    )


def identified() -> tuple[Principal | None, str | None, str | None]:
    """What `identify` found: the principal (None: nobody), the id of its token whose
    revocation is still to be checked (None: none is), and that token's family (None: no
    token, or one signed before families), which is checked with the token's own."""
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    jti: str | None = ctx.get("unchecked_jti")
    claims: dict[str, Any] | None = ctx.get("claims")
    family = access_family(claims) if claims is not None else None
    return ctx.get("principal"), jti, family


def require_access_token() -> None:
    """Authenticate the request or raise a 401 (503 when revocation cannot be checked);
    sets `g.principal`."""
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    if "principal" not in ctx and "auth_error" not in ctx:
        # `identify` did not run: no credential, or not /v1
        ctx.principal = _authenticate(request._get_current_object(), ctx)  # type: ignore[attr-defined]
    _, jti, family = identified()
    if jti is not None:  # no gate ran for this token: ask Redis here
        try:
            settle_revocation(is_revoked(jti, family))
        except redis.RedisError:
            settle_revocation(None)
    if "principal" not in ctx:
        error: Unauthorized | Overloaded = ctx.auth_error
        raise error


def require_bearer_token() -> None:
    """Like `require_access_token`, but an API key is refused: managing API keys and
    logging out take a person's token, so a leaked key cannot mint or revoke keys."""
    if "Authorization" not in request.headers:
        raise Unauthorized(_bearer_only("access"))
    require_access_token()
    if current_principal().api_key_id is not None:
        raise Unauthorized(_bearer_only("access"))


def _bearer_only(kind: str) -> str:
    """The 401's detail on a route that takes only a bearer token of `kind`, sent none: the
    general hint would offer an API key, which such a route refuses."""
    wanted = f"Authorization: Bearer <{kind} token>"
    if API_KEY_HEADER in request.headers:
        return f"this route takes {wanted}, not an API key"
    return f"send {wanted}"


def _authenticate(req: Request, ctx: Any) -> Principal:
    """The caller of `req` (`ctx`: its `g`). A bearer token's revocation is left to the
    gate: its id waits in `g.unchecked_jti`."""
    key = req.headers.get(API_KEY_HEADER)
    if key is None:
        payload = _access_claims(req)
        ctx.claims, ctx.unchecked_jti = payload, payload["jti"]
        return _bearer_principal(payload["sub"], payload.get("role", "user"))
    if "Authorization" in req.headers:
        raise Unauthorized(f"send Authorization or {API_KEY_HEADER}, not both")
    # Its own short transaction: the time of use is kept even when the request fails.
    with current_app.extensions["conveyor"].session_factory() as session:
        owner = api_keys.authenticate(session, key=key)
        session.commit()
    if owner is None:
        raise Unauthorized("the API key is invalid or revoked")
    return Principal(owner.user_id, owner.role, api_key_id=owner.key_id)


@functools.lru_cache(maxsize=4096)
def _bearer_principal(user_id: str, role: str) -> Principal:
    """The principal a valid access token's claims name, made once per user and role and
    then shared by every request that presents such a token (a UUID parsed and an object
    built per request before). Only derived values are kept: it is reached after
    `AccessTokens.claims` accepted the token on this very use (`exp` and `nbf` checked
    now), and the token's revocation is still the gate's to check, so no token lives a
    moment longer for it. An API key's principal is never kept: its revocation takes
    effect at the next request because each one reads the key."""
    return Principal(uuid.UUID(user_id), role)


def _bearer_token(req: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`; the scheme in any case (RFC 9110,
    11.1: `bearer` and `BEARER` were refused)."""
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _access_claims(req: Request) -> dict[str, Any]:
    token = _bearer_token(req)
    if token is None:
        raise Unauthorized(_missing_or_invalid())
    tokens: AccessTokens = current_app.extensions["conveyor.access_tokens"]
    try:
        return tokens.claims(token)
    except InvalidToken:
        raise Unauthorized(_missing_or_invalid()) from None


def rotate_refresh_token() -> tuple[dict[str, Any], Successor]:
    """The claims of the presented refresh token and its successor, whose rotation Redis
    has recorded; a 401 for any token that may not refresh (a reused one revokes its
    family first), a 503 when Redis cannot record the rotation."""
    payload = _refresh_claims()
    try:
        return payload, _rotate(payload)
    except Retired as retired:
        if retired.reused:
            family = family_of(payload)
            _revocations().record_family(family, owner=uuid.UUID(payload["sub"]))
            current_app.extensions["conveyor"].gate.forget_family(family)
            log.warning("auth.refresh_token_reused", user_id=payload["sub"], family=family)
        raise Unauthorized(_missing_or_invalid()) from None
    except (redis.RedisError, RevocationsUnloaded):
        raise Unavailable("token revocation cannot be checked right now", retry_after_s=2) from None


def _rotate(payload: dict[str, Any]) -> Successor:
    """Rotate, Redis filled with the revocations again first if it has lost them."""
    refresh_tokens: RefreshTokens = current_app.extensions["conveyor.refresh_tokens"]
    try:
        return refresh_tokens.rotate(payload)
    except RevocationsUnloaded:
        if not _revocations().reload():
            raise
        return refresh_tokens.rotate(payload)


def _refresh_claims() -> dict[str, Any]:
    """A refresh token's verified claims; its revocation is the rotation's to check."""
    token = _bearer_token(request)
    if token is None:
        if "Authorization" not in request.headers:
            raise Unauthorized(_bearer_only("refresh"))
        raise Unauthorized(_missing_or_invalid())
    try:
        payload = decode_token(token)
    except (JWTExtendedException, PyJWTError):
        raise Unauthorized(_missing_or_invalid()) from None
    if not complete(payload) or payload["type"] != "refresh":
        raise Unauthorized(_missing_or_invalid())
    return payload


def _missing_or_invalid() -> str:
    if "Authorization" not in request.headers:
        return _CREDENTIALS_HINT
    return "the token is invalid, expired or revoked"


def issue_tokens(principal: Principal, refresh: Successor | None = None) -> dict[str, Any]:
    """An access token and the refresh token `refresh` (by default, a login's: the first
    of a new family); the access token carries the family too, so it dies with it."""
    if refresh is None:
        refresh_tokens: RefreshTokens = current_app.extensions["conveyor.refresh_tokens"]
        refresh = refresh_tokens.first()
    identity = str(principal.user_id)
    access_claims = {"role": principal.role, "fam": refresh.family}
    return {
        "access_token": create_access_token(identity=identity, additional_claims=access_claims),
        "refresh_token": create_refresh_token(
            identity=identity, additional_claims={"role": principal.role, **refresh.claims()}
        ),
        "token_type": "Bearer",
        "expires_in": int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
    }


def revoke_current() -> None:
    """Revoke the presented token and the login it belongs to: logout ends the session. A
    logout without a body left the login's refresh token working for its whole life, so a
    client that logged out and forgot to send it was still signed in, out of sight."""
    payload: dict[str, Any] = g.claims
    owner = uuid.UUID(payload["sub"])
    _revoke(payload["jti"], payload["exp"], owner=owner)
    family = family_of(payload) if payload.get("type") == "refresh" else access_family(payload)
    if family is not None:  # None: an access token signed before families
        _revoke_family(family, owner=owner)


def revoke_encoded(token: str, *, owner: uuid.UUID) -> None:
    """Revoke the family of a refresh token sent in a logout body: every refresh and access
    token descended from its login, however far it was rotated. One of the owner's that
    expired, was rotated or was revoked already still names its family, and logout goes
    on. Anything else (not our token, another user's, not a refresh token) is a 422 on the
    body, before anything is revoked: it was a 401, which says the *presented* token failed,
    and a client that believed it dropped an access token that stayed valid."""
    try:
        payload = decode_token(token, allow_expired=True)
    except (JWTExtendedException, PyJWTError):
        payload = {}
    if not complete(payload) or payload["sub"] != str(owner) or payload["type"] != "refresh":
        raise InvalidInput(
            problems=[FieldProblem("refresh_token", "not a refresh token of this account")]
        )
    _revoke_family(family_of(payload), owner=owner)


def _revoke_family(family: str, *, owner: uuid.UUID) -> None:
    _revocations().revoke_family(family, owner=owner)
    current_app.extensions["conveyor"].gate.forget_family(family)  # refused here at once


def is_revoked(jti: object, family: str | None = None) -> bool | None:
    """None: unknown (Redis has lost the revocations and they cannot be loaded now)."""
    if not isinstance(jti, str):
        return True  # a token we did not sign: refused, never a KeyError
    return _revocations().is_revoked(jti, family)


def _revoke(jti: str, expires_at: int, *, owner: uuid.UUID) -> None:
    # Kept only as long as the token would have been valid; after that it is refused anyway.
    _revocations().revoke_token(jti, owner=owner, expires_at=expires_at)
    current_app.extensions["conveyor"].gate.forget(jti)  # refused here from now on


def _revocations() -> RevocationStore:
    store: RevocationStore = current_app.extensions["conveyor"].revocations
    return store


def _redis() -> redis.Redis:
    client: redis.Redis = current_app.extensions["conveyor"].redis
    return client
