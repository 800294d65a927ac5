"""Refresh-token rotation on a real Redis: what one Lua script decides when refreshes race."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from api.gate import REVOCATIONS_LOADED_KEY, revocation_keys, revoke
from api.refresh_tokens import RefreshTokens, Retired, RevocationsUnloaded, Successor
from workers.redis_clients import make_redis

RACERS = 8


@pytest.fixture
def client(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    # Redis holds every revocation (api/revocation_store.py): rotations may be decided.
    client.set(REVOCATIONS_LOADED_KEY, 1)
    yield client
    client.close()


def is_revoked(client: redis.Redis, jti: str, family: str) -> bool:
    return bool(client.exists(*revocation_keys(jti, family)))


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


class _ReplyDropper:
    """A TCP relay in front of Redis that, once armed, passes the next EVALSHA on to Redis
    and then closes the client's connection instead of passing the reply back: the script
    has run, and the client saw its connection die, as when a reply is lost on the network.
    The relay handles one command at a time, which is how a plain (unpipelined) client
    talks."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.armed = False
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as server:
            while command := client.recv(65536):
                server.sendall(command)
                reply = server.recv(65536)
                if self.armed and b"EVALSHA" in command.upper():
                    self.armed = False
                    self.dropped += 1
                    return  # closes the client's side with the reply unsent
                client.sendall(reply)

    def close(self) -> None:
        self.listener.close()


def test_a_refresh_whose_reply_was_lost_is_not_taken_for_a_reuse(client, redis_url):
    """redis-py sends the script again when the connection dies before its reply (the
    application's clients retry once): the second run must answer what the first did.
    Without a grace, it found its own rotation and revoked the family: the user was
    logged out by a network hiccup."""
    url = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    relay = _ReplyDropper((url.get("host", "127.0.0.1"), url.get("port", 6379)))
    relayed = make_redis(f"redis://127.0.0.1:{relay.port}/{url.get('db', 0)}", timeout_s=5)
    try:
        tokens = RefreshTokens(relayed, ttl_s=3600, reuse_grace_s=0)
        tokens.rotate(_payload(tokens.first()))  # Redis has the script: one EVALSHA a refresh
        first = tokens.first()
        relay.armed = True
        successor = tokens.rotate(_payload(first))
        assert relay.dropped == 1
        assert successor.family == first.family
        assert not is_revoked(relayed, "any-token", first.family)
        assert tokens.rotate(_payload(successor)).family == first.family  # the chain goes on
    finally:
        relayed.close()
        relay.close()


def test_nothing_is_rotated_while_redis_has_lost_the_revocations(client):
    """A Redis without REVOCATIONS_LOADED_KEY may have forgotten that the token was
    revoked: the script decides nothing until the revocations are loaded again."""
    tokens = RefreshTokens(client, ttl_s=3600, reuse_grace_s=10)
    first = tokens.first()
    client.delete(REVOCATIONS_LOADED_KEY)
    with pytest.raises(RevocationsUnloaded):
        tokens.rotate(_payload(first))
    client.set(REVOCATIONS_LOADED_KEY, 1)
    assert tokens.rotate(_payload(first)).family == first.family  # not spent meanwhile
