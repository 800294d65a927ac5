"""The gate on a real Redis: leased rate-limit permits and remembered revocation checks.

Each test counts for a key of its own, so counters other tests left never meet these."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from limits import parse

from api.gate import REVOCATIONS_LOADED_KEY, Gate, lease_size, revoke, revoke_family
from tests.helpers import WINDOWS_START, Clock
from tests.ports import closed_port
from tests.stack import private_redis
from workers.redis_clients import make_redis


@pytest.fixture
def client(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    # Redis holds every revocation (api/revocation_store.py): the gate may answer.
    client.set(REVOCATIONS_LOADED_KEY, 1)
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
    # Both in this hour: one fits when 2 * (3600 - e)/3600 <= 1, half-way through the next.
    assert 1800 < refused.reset_in_s <= 5400


def test_a_token_is_asked_about_once_per_recheck_period(client):
    jti = uuid.uuid4().hex
    checking, other_process = Gate(client, None, revocation_recheck_s=30), Gate(client, None)
    assert checking.check(_key(), jti=jti).revoked is False
    revoke(client, jti, ttl_s=60)  # through another process
    assert checking.check(_key(), jti=jti).revoked is False  # still trusted, for 30 s
    assert other_process.check(_key(), jti=jti).revoked is True
    checking.forget(jti)  # what the revoking process itself does
    assert checking.check(_key(), jti=jti).revoked is True


def test_a_revoked_family_refuses_all_its_tokens_in_the_same_check(client):
    """One EXISTS asks about the token and its family (a login, api/refresh_tokens.py),
    with limits counted in the same script; the family is trusted as long as the token."""
    family, jti = uuid.uuid4().hex, uuid.uuid4().hex
    checking, other_process = Gate(client, None, revocation_recheck_s=30), Gate(client, "5/minute")
    assert checking.check(_key(), jti=jti, family=family).revoked is False
    revoke_family(client, family, ttl_s=60)  # through another process
    assert checking.check(_key(), jti=jti, family=family).revoked is False  # trusted, 30 s
    key = _key()
    assert other_process.check(key, jti=uuid.uuid4().hex, family=family).revoked is True
    assert other_process.check(key, jti=uuid.uuid4().hex, family=None).revoked is False
    assert other_process.check(key, jti=uuid.uuid4().hex, family="another").revoked is False
    assert _shared_count(client, key) == 2  # the revoked token's request was not counted
    checking.forget_family(family)  # what the revoking process itself does
    assert checking.check(_key(), jti=jti, family=family).revoked is True


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
        redis.Redis.from_url(server.url).set(REVOCATIONS_LOADED_KEY, 1)
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


T = WINDOWS_START


@pytest.fixture(params=["redis", "memory"])
def counted_in(request, client, redis_url):  # type: ignore[no-untyped-def]
    """The Redis the gate counts in: the test's, or one that is not there (process memory)."""
    if request.param == "redis":
        return client
    return make_redis(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.5)


def _burst(gate: Gate, key: str, clock: Clock, at: float, n: int) -> list[bool]:
    clock.now = at
    return [gate.check(key, jti=None).allowed for _ in range(n)]


def test_retry_after_is_when_the_sliding_window_lets_a_request_through(counted_in):
    """5/minute, five requests at second 50, refused at 55: the fixed window rolls over in
    5 s, but the weighted count is then 5 and falls to 4 only at second 12 of the next."""
    clock, key = Clock(T), _key()
    gate = Gate(counted_in, "5/minute", clock=clock)
    assert _burst(gate, key, clock, T + 50, 6) == [True] * 5 + [False]
    clock.now = T + 55
    refused = gate.check(key, jti=None)
    assert (refused.allowed, refused.remaining, refused.reset_in_s) == (False, 0, 17)
    assert _burst(gate, key, clock, T + 55 + 16, 1) == [False]
    assert _burst(gate, key, clock, T + 55 + 17, 2) == [True, False]
    # Now 5 * 48/60 + 1 = 5: the next permit comes when 5 * (60 - e)/60 = 3, at e = 24.
    refused = gate.check(key, jti=None)
    assert refused.reset_in_s == 12
    assert _burst(gate, key, clock, T + 72 + 11, 1) == [False]
    assert _burst(gate, key, clock, T + 72 + 12, 1) == [True]


@pytest.mark.parametrize(
    ("limit", "bursts"),
    [
        # (seconds into the first window, requests) ...: then refused until Retry-After.
        ("5/minute", [(50, 5)]),
        ("5/minute", [(10, 3), (65, 2)]),
        ("5/minute", [(0, 5)]),
        ("1/minute", [(30, 1)]),
        ("3/2second", [(1.5, 3)]),
        ("7/10second", [(2, 4), (13, 3)]),
        ("300/minute", [(59, 300)]),
        ("300/minute", [(20, 150), (61, 150)]),
    ],
)
def test_a_client_that_waits_its_retry_after_is_allowed_and_not_much_before(
    counted_in, limit, bursts
):
    clock, key = Clock(T), _key()
    gate = Gate(counted_in, limit, clock=clock)
    for at, n in bursts:
        assert all(_burst(gate, key, clock, T + at, n))
    refused_at = clock.now
    while (verdict := gate.check(key, jti=None)).allowed:  # a lease's last permits
        pass
    retry_after = verdict.reset_in_s
    assert retry_after >= 1
    if retry_after > 1:
        assert _burst(gate, key, clock, refused_at + retry_after - 1, 1) == [False]
    assert _burst(gate, key, clock, refused_at + retry_after, 1) == [True]


def test_the_limit_that_holds_a_client_longest_is_the_one_its_429_names(counted_in):
    clock, key = Clock(T), _key()
    gate = Gate(counted_in, "2/second;3/minute", clock=clock)
    assert _burst(gate, key, clock, T + 30, 3) == [True, True, False]  # the second's limit
    assert _burst(gate, key, clock, T + 31.5, 2) == [True, False]  # now both refuse
    verdict = gate.check(key, jti=None)
    assert verdict.policy == "3;w=60"
    assert verdict.reset_in_s == 49  # 60 - 31.5, then 3 * (60 - e)/60 ≤ 2 at e = 20


def test_an_allowed_answer_resets_when_the_whole_quota_is_back(counted_in):
    """RateLimit-Reset on an allowed answer: seconds until this window's count has left the
    sliding window too, the end of the next fixed window; then all of the limit is there."""
    clock, early, on_time = Clock(T + 50), _key(), _key()
    gate = Gate(counted_in, "5/minute", clock=clock)
    allowed = [gate.check(key, jti=None) for key in (early, on_time)]
    assert [(v.remaining, v.reset_in_s) for v in allowed] == [(4, 70), (4, 70)]
    assert _burst(gate, early, clock, T + 119, 5) == [True] * 4 + [False]
    assert _burst(gate, on_time, clock, T + 120, 6) == [True] * 5 + [False]


def test_a_redis_that_lost_the_revocations_answers_unknown_until_they_are_back(client):
    """Without REVOCATIONS_LOADED_KEY, no token is "not revoked": the gate asks its
    `reload_and_check` (the web's: api/revocation_store.py), or answers unknown (503)."""
    jti, key = uuid.uuid4().hex, _key()
    client.delete(REVOCATIONS_LOADED_KEY)
    assert Gate(client, "5/minute").check(key, jti=jti).revoked is None
    assert _shared_count(client, key) == 1  # the limits are counted all the same
    asked = []

    def reload_and_check(token, family):  # type: ignore[no-untyped-def]
        asked.append((token, family))
        return True

    gate = Gate(client, "5/minute", reload_and_check=reload_and_check)
    assert gate.check(key, jti=jti, family="fam").revoked is True
    assert asked == [(jti, "fam")]
    client.set(REVOCATIONS_LOADED_KEY, 1)
    assert gate.check(_key(), jti=uuid.uuid4().hex).revoked is False
    assert len(asked) == 1  # loaded: nothing more to ask
