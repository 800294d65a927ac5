"""Verification of the access tokens that come with nearly every request.

A client sends the same token with every request for its lifetime (15 minutes by default),
and checking it from scratch (base64, JSON, HMAC, claims) cost a profile of `GET
/v1/jobs/<id>` more than the database read. A verified token's claims are remembered, so
later uses cost a dict lookup; the times (`exp`, `nbf`) are checked on every use, and
revocation is left to api/gate.py (which asks Redis about a token at most once a second).
Refused tokens are not remembered: a forger gains nothing from it and cannot fill memory.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt

ALGORITHM = "HS256"
ISSUER = "conveyor"
# Claims every token we sign carries; a token without one is refused, signed or not.
REQUIRED_CLAIMS = ("sub", "jti", "iat", "nbf", "exp", "iss", "type")
TOKEN_TYPES = ("access", "refresh")


class InvalidToken(Exception):
    """Not a token we signed, or no longer valid; which, a client is never told."""


def complete(payload: dict[str, Any]) -> bool:
    """Every claim we sign is there, and `sub` is a user id (PyJWT itself checks `exp` and
    `nbf` only when they are present)."""
    if any(claim not in payload for claim in REQUIRED_CLAIMS):
        return False
    try:
        uuid.UUID(str(payload["sub"]))
    except ValueError:
        return False
    return isinstance(payload["jti"], str) and payload["type"] in TOKEN_TYPES


class AccessTokens:
    def __init__(
        self, secret: str, *, remembered: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self._clock = clock
        self._remembered = remembered
        self._claims: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token, or InvalidToken."""
        payload = self._claims.get(token)
        if payload is None:
            payload = self._verify(token)
            with self._lock:
                if len(self._claims) >= self._remembered:
                    self._claims.clear()  # tokens expire within minutes; start again
                self._claims[token] = payload
        if not payload["nbf"] <= self._clock() < payload["exp"]:
            raise InvalidToken
        return payload

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=0,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError:
            raise InvalidToken from None
        if not complete(payload) or payload["type"] != "access":
            raise InvalidToken
        if not isinstance(payload["nbf"], int | float) or not isinstance(
            payload["exp"], int | float
        ):
            raise InvalidToken
        return payload
