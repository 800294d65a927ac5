"""The gate on a real Redis: leased rate-limit permits and remembered revocation checks.

Each test counts for a key of its own, so counters other tests left never meet these."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from limits import parse

from api.gate import Gate, lease_size, revoke
from tests.stack import private_redis


@pytest.fixture
def client(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _key() -> str:
    return f"user:{uuid.uuid4()}"


def _shared_count(client: redis.Redis, key: str, window_s: int = 60) -> int:
    """The current fixed window's counter of `key`, as every process sees it."""
    index = int(time.time() // window_s)
    return int(client.get(f"conveyor:gate:{window_s}:{key}:{index}") or 0)


def test_permits_are_leased_in_blocks_and_spent_locally(client):
    gate, key = Gate(client, "10000/minute"), _key()
    block = lease_size(parse("10000/minute"))
    assert block == 100
    verdicts = [gate.check(key, jti=None) for _ in range(block)]
    assert all(v.allowed for v in verdicts)
    assert _shared_count(client, key) == block  # one lease served them all
    assert [v.remaining for v in verdicts[:3]] == [9999, 9998, 9997]
    assert gate.check(key, jti=None).allowed
    assert _shared_count(client, key) == 2 * block


def test_small_limits_lease_one_permit_at_a_time(client):
    gate, key = Gate(client, "5/minute"), _key()
    assert [gate.check(key, jti=None).allowed for _ in range(6)] == [True] * 5 + [False]
    assert _shared_count(client, key) == 5


def test_processes_leasing_the_same_budget_never_pass_it_together(client):
    limit = "300/minute"
    first, second, key = Gate(client, limit), Gate(client, limit), _key()
    allowed = 0
    for _ in range(400):
        allowed += first.check(key, jti=None).allowed
        allowed += second.check(key, jti=None).allowed
    # Leased but unspent permits count: a caller may be refused up to a block per process
    # early, never let through late.
    assert 300 - 2 * lease_size(parse(limit)) <= allowed <= 300
    assert _shared_count(client, key) <= 300


def test_a_refused_request_names_the_limit_that_refused(client):
    gate, key = Gate(client, "1000/minute;2/hour"), _key()
    assert [gate.check(key, jti=None).allowed for _ in range(2)] == [True, True]
    refused = gate.check(key, jti=None)
    assert not refused.allowed
    assert refused.policy == "2;w=3600"
    assert 0 < refused.reset_in_s <= 3600


def test_a_token_is_asked_about_once_per_recheck_period(client):
    jti = uuid.uuid4().hex
    checking, other_process = Gate(client, None, revocation_recheck_s=30), Gate(client, None)
    assert checking.check(_key(), jti=jti).revoked is False
    revoke(client, jti, ttl_s=60)  # through another process
    assert checking.check(_key(), jti=jti).revoked is False  # still trusted, for 30 s
    assert other_process.check(_key(), jti=jti).revoked is True
    checking.forget(jti)  # what the revoking process itself does
    assert checking.check(_key(), jti=jti).revoked is True


def test_a_revocation_elsewhere_is_seen_once_the_period_has_passed(client):
    jti = uuid.uuid4().hex
    gate = Gate(client, "10000/minute", revocation_recheck_s=0.2)
    assert gate.check(_key(), jti=jti).revoked is False
    revoke(client, jti, ttl_s=60)
    deadline = time.monotonic() + 5
    while gate.check(_key(), jti=jti).revoked is False:
        assert time.monotonic() < deadline, "the revocation was never seen"


def test_recheck_zero_asks_redis_every_time(client):
    jti = uuid.uuid4().hex
    gate = Gate(client, None, revocation_recheck_s=0)
    assert gate.check(_key(), jti=jti).revoked is False
    revoke(client, jti, ttl_s=60)
    assert gate.check(_key(), jti=jti).revoked is True


def test_without_redis_a_fresh_token_still_works_and_limits_count_in_memory():
    jti, key = uuid.uuid4().hex, _key()
    with private_redis() as server:
        gate = Gate(
            redis.Redis.from_url(server.url, socket_timeout=0.5), "3/minute",
            revocation_recheck_s=30,
        )  # fmt: skip
        assert gate.check(key, jti=jti).revoked is False  # checked once while Redis answered
        server.stop()
        fresh = gate.check(key, jti=jti)
        assert fresh.revoked is False and fresh.allowed
        assert gate.check(key, jti=uuid.uuid4().hex).revoked is None  # unknown: 503 upstream
        # The memory counts from zero: the two above and one more, then refused.
        assert [gate.check(key, jti=jti).allowed for _ in range(2)] == [True, False]
