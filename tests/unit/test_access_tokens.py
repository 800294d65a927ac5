"""Access tokens are verified once and remembered; their times are checked on every use."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from api.tokens import ALGORITHM, ISSUER, AccessTokens, InvalidToken

SECRET = "a-test-secret-of-more-than-thirty-two-characters"


def _token(secret: str = SECRET, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "iss": ISSUER,
        "type": "access",
    }
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, ALGORITHM)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_is_refused_once_it_has_expired():
    clock = Clock()
    tokens = AccessTokens(SECRET, clock=clock)
    token = _token()
    claims = tokens.claims(token)
    assert tokens.claims(token) is claims  # the second use is a lookup
    clock.now += 61
    with pytest.raises(InvalidToken):
        tokens.claims(token)


# Made when the test runs, not when it is collected: "not yet" must still lie ahead.
@pytest.mark.parametrize(
    "make",
    [
        lambda: _token(secret="another-secret-of-more-than-thirty-two-characters"),
        lambda: _token(type="refresh"),
        lambda: _token(iss="someone-else"),
        lambda: _token(jti=None),
        lambda: _token(sub="not-a-user-id"),
        lambda: _token(exp=int(time.time()) - 1),
        lambda: _token(nbf=int(time.time()) + 30),
        lambda: "not.a.token",
    ],
    ids=["wrong key", "refresh", "issuer", "no jti", "sub", "expired", "not yet", "garbage"],
)
def test_tokens_we_would_not_sign_now_are_refused(make):
    with pytest.raises(InvalidToken):
        AccessTokens(SECRET).claims(make())


def test_refused_tokens_are_not_remembered_and_memory_is_bounded():
    tokens = AccessTokens(SECRET, remembered=3)
    for _ in range(10):
        tokens.claims(_token())
        with pytest.raises(InvalidToken):
            tokens.claims(_token(type="refresh"))
    assert len(tokens._claims) <= 3
