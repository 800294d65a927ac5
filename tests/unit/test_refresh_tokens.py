"""Refresh-token rotation on a real Redis: what one Lua script decides when refreshes race."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from api.gate import is_revoked, revoke
from api.refresh_tokens import RefreshTokens, Retired, Successor

RACERS = 8


@pytest.fixture
def client(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _payload(token: Successor) -> dict[str, Any]:
    return {"jti": token.jti, "fam": token.family}


def _race(tokens: RefreshTokens, token: Successor) -> list[Successor | Retired]:
    """RACERS threads refresh `token` at once (released together by a barrier)."""
    barrier = threading.Barrier(RACERS)

    def refresh(_: int) -> Successor | Retired:
        barrier.wait()
        try:
            return tokens.rotate(_payload(token))
        except Retired as retired:
            return retired

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(refresh, range(RACERS)))


@pytest.mark.parametrize("round_", range(10))
def test_concurrent_refreshes_within_the_grace_get_one_successor(client, round_):
    """Read-then-write would let two racers both find the token current and rotate it into
    two successors: two chains, one of them never found out."""
    tokens = RefreshTokens(client, ttl_s=3600, reuse_grace_s=10)
    first = tokens.first()
    answers = _race(tokens, first)
    assert all(isinstance(answer, Successor) for answer in answers), answers
    assert len({answer.jti for answer in answers if isinstance(answer, Successor)}) == 1
    successor = answers[0]
    assert isinstance(successor, Successor) and successor.family == first.family
    assert tokens.rotate(_payload(successor)).family == first.family  # the chain goes on


@pytest.mark.parametrize("round_", range(10))
def test_concurrent_refreshes_without_a_grace_rotate_once_and_revoke_the_family(client, round_):
    tokens = RefreshTokens(client, ttl_s=3600, reuse_grace_s=0)
    first = tokens.first()
    answers = _race(tokens, first)
    successors = [answer for answer in answers if isinstance(answer, Successor)]
    assert len(successors) == 1
    refused = [answer for answer in answers if isinstance(answer, Retired)]
    # The first of them finds the reuse and revokes the family; the rest find it revoked.
    assert [answer.reused for answer in refused].count(True) == 1
    assert is_revoked(client, "any-token", first.family)
    with pytest.raises(Retired):
        tokens.rotate(_payload(successors[0]))


def test_a_token_on_the_blocklist_is_refused_without_revoking_its_family(client):
    """Logout before families put refresh tokens' ids on the blocklist: still refused, and
    not taken for a reuse (their successors, if any, are not touched)."""
    tokens = RefreshTokens(client, ttl_s=3600, reuse_grace_s=10)
    first = tokens.first()
    revoke(client, first.jti, ttl_s=60)
    with pytest.raises(Retired) as refused:
        tokens.rotate(_payload(first))
    assert not refused.value.reused
    assert not is_revoked(client, "any-token", first.family)
