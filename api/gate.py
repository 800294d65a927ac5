"""Token revocation and rate limits of `/v1` requests, with Redis consulted for only a few
of them.

Both used to cost one Redis round trip per request (one Lua script answering both, which
itself replaced three calls); a profile put that script at a quarter of the
request-specific CPU of `GET /v1/jobs/<id>`. Now:

- **Revocation** of a token is asked of Redis at most once per `recheck_s` per process
  (`TOKEN_REVOCATION_RECHECK_S`, 1 s by default; 0 asks every time): the token's own id
  and its family's (the login it descends from, api/refresh_tokens.py), both in the one
  `EXISTS`. A token revoked through this process is refused here at once, and so is its
  family; another process may accept them for up to `recheck_s` more.
- **Rate limits** are sliding-window counters (the `limits` library's
  "sliding-window-counter" algorithm, which Flask-Limiter used here before): the count of
  the previous fixed window, weighted by how much of it still overlaps the sliding window,
  plus the current window's. A process *leases* permits from the shared counter in blocks
  (1 % of the limit, at most 100; 1 for limits under 200, which stay exact) and spends them
  locally. Leased permits count at once, spent or not, so a caller can be refused a little
  early (at most a block per process per window), never let through late. Several limits
  ("100/second;6000/minute") are checked together; a request counts against all of them
  only when all allow it.
- **A refusal's `reset_in_s`** (Retry-After, and the 429's RateLimit-Reset) is when a
  request will be allowed if nothing more is counted: the earliest time the weighted count
  is at most amount - 1, solved from the two windows' counts (which the script returns with
  a refusal), in whole seconds rounded up, at least 1, for the limit that holds the caller
  longest. The fixed window's roll-over is not it: a previous window counts in full just
  after it. **An allowed answer's `reset_in_s`** (RateLimit-Reset) is when all of the limit
  is there again: the current window holds the answer's own request, so the end of the next
  fixed window. An allowed request pays a subtraction for it, as before.

Both questions travel in one Lua script, and only when one of them needs Redis.

Redis away: a token that is due for a check cannot be checked (the caller answers 503), and
limits are counted in this process's memory, so they hold per process instead of for the
whole server; Redis is tried again after 1, 2, 4 ... 32 s. Redis back but empty (it lost
the revocations: REVOCATIONS_LOADED_KEY is missing, which the script asks in the same
call): the gate's `reload_and_check` fills it from PostgreSQL before answering
(api/revocation_store.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis
import structlog
from limits import RateLimitItem, parse_many

log = structlog.get_logger("conveyor.api")

_REVOKED_PREFIX = "conveyor:revoked:"
# Set once every revocation PostgreSQL keeps is in Redis (api/revocation_store.py); missing,
# Redis is new or has lost them, and no check may answer "not revoked" until they are back.
REVOCATIONS_LOADED_KEY = "conveyor:revocations:loaded"
_UNKNOWN = 2  # the script's first answer when REVOCATIONS_LOADED_KEY is missing
_REVOKED_FAMILY_PREFIX = "conveyor:revoked:fam:"  # token ids are UUIDs: no clash
_COUNTER_PREFIX = "conveyor:gate:"
_NO_KEY = "conveyor:gate:-"  # stands in for "no token to check" (scripts take fixed KEYS)
_MAX_BACKOFF_S = 32.0
_MAX_LEASE = 100
_REMEMBERED = 100_000  # keys or tokens; past that, forgotten all at once (a rare sweep)

# KEYS: the token's revocation key, its family's, REVOCATIONS_LOADED_KEY, then (current
# window, previous window) per limit.
# ARGV: check revocation (0/1), then (amount, window_s, elapsed_s, wanted) per limit.
# Returns {1} when revoked. Otherwise the first item is 0 (not revoked, or not asked) or 2
# (unknown: Redis has lost the revocations, REVOCATIONS_LOADED_KEY is missing), and the
# limits are counted all the same: {_, 0, refusing limit (1-based), then per limit: previous
# window's count, current window's} when refused (what its Retry-After is solved from); else
# {_, 1, 0, then per limit: permits granted, weighted count after the grant}. A limit with
# wanted = 0 is only read. Nothing is granted unless every limit that wants permits can
# give one.
_SCRIPT = """
local unknown = 0
if ARGV[1] == "1" then
  if redis.call("EXISTS", KEYS[3]) == 0 then
    unknown = 2
  elseif redis.call("EXISTS", KEYS[1], KEYS[2]) > 0 then
    return {1}
  end
end
local n = (#ARGV - 1) / 4
local grants, counts, windows, refusing = {}, {}, {}, 0
for i = 1, n do
  local amount, window = tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1])
  local elapsed, wanted = tonumber(ARGV[4*i]), tonumber(ARGV[4*i+1])
  local current = tonumber(redis.call("GET", KEYS[2*i+2]) or "0")
  local previous = tonumber(redis.call("GET", KEYS[2*i+3]) or "0")
  local count = previous * (window - elapsed) / window + current
  local grant = math.min(wanted, math.floor(amount - count))
  if wanted > 0 and grant < 1 and refusing == 0 then
    refusing = i
  end
  grants[i], counts[i] = math.max(grant, 0), count
  windows[2*i-1], windows[2*i] = previous, current
end
if refusing > 0 then
  return {unknown, 0, refusing, unpack(windows)}
end
local answer = {unknown, 1, 0}
for i = 1, n do
  if grants[i] > 0 then
    if redis.call("INCRBY", KEYS[2*i+2], grants[i]) == grants[i] then
      redis.call("EXPIRE", KEYS[2*i+2], 2 * tonumber(ARGV[4*i-1]))
    end
  end
  answer[#answer + 1] = grants[i]
  answer[#answer + 1] = tostring(counts[i] + grants[i])
end
return answer
"""


@dataclass(frozen=True)
class Verdict:
    """`revoked` is None when it could not be checked (or no token was given: False).
    `reset_in_s`: allowed, seconds until all of `limit` is there again; refused, seconds
    until a request will be allowed (Retry-After), if nothing more is counted meanwhile."""

    revoked: bool | None
    allowed: bool
    limit: RateLimitItem | None = None
    remaining: int = 0
    reset_in_s: int = 0

    @property
    def policy(self) -> str:
        assert self.limit is not None
        return f"{self.limit.amount};w={self.limit.get_expiry()}"


@dataclass
class _Lease:
    """Permits of one key under one limit, leased from Redis for one window."""

    window: int  # the fixed window's index
    unspent: int  # may dip below 0 when threads race for the last one; the next lease repays
    count: float  # the shared weighted count after the lease, for the headers


def lease_size(item: RateLimitItem) -> int:
    return max(1, min(_MAX_LEASE, item.amount // 100))


def _spent(item: RateLimitItem, lease: _Lease | None, now: float) -> bool:
    """No permit of this limit left here for the current window: Redis must be asked."""
    return lease is None or lease.window != _index(item, now) or lease.unspent < 1


def _windows(item: RateLimitItem, key: str, now: float) -> tuple[str, str, float]:
    window = item.get_expiry()
    index = _index(item, now)
    base = f"{_COUNTER_PREFIX}{window}:{key}:"
    return f"{base}{index}", f"{base}{index - 1}", now - index * window


def _index(item: RateLimitItem, now: float) -> int:
    return int(now // item.get_expiry())


def _elapsed(item: RateLimitItem, now: float) -> float:
    return now - _index(item, now) * item.get_expiry()


def _restored_in(item: RateLimitItem, now: float) -> int:
    """An allowed answer's `RateLimit-Reset`: seconds until all of `item` is there again if
    nothing more is counted. The current window holds the answer's own request, so that is
    when it has left the sliding window too: the end of the next fixed window."""
    window = item.get_expiry()
    return math.ceil(2 * window - now % window)


def _wait(item: RateLimitItem, previous: int, current: int, elapsed: float) -> float:
    """Seconds until one more request fits (the weighted count, previous * (window -
    elapsed) / window + current, is at most amount - 1) if nothing more is counted; at most
    0 when one fits now."""
    window, room = item.get_expiry(), item.amount - 1
    if room < 0:  # a limit of 0: nothing ever fits; come back in a window to hear it again
        return float(window)
    if current <= room:  # in this window, as the previous one's weight falls
        if previous <= 0:
            return 0.0
        return window * (previous - room + current) / previous - elapsed
    # In the next window, where this window's count is the previous one's, falling in turn.
    return window - elapsed + window * (current - room) / current


def _refused(
    counted: list[tuple[RateLimitItem, int, int]], now: float, *, revoked: bool | None
) -> Verdict:
    """A refusal, from the (limit, previous window's count, current's) that wanted a permit:
    it names the limit that holds the caller longest, and `reset_in_s` (Retry-After and
    RateLimit-Reset) is when a request will be allowed, in whole seconds, at least 1."""
    waits = [(_wait(item, p, c, _elapsed(item, now)), item) for item, p, c in counted]
    wait, item = max(waits, key=lambda waiting: waiting[0])
    return Verdict(revoked=revoked, allowed=False, limit=item, reset_in_s=max(1, math.ceil(wait)))


def revoke(client: redis.Redis, jti: str, *, ttl_s: int) -> None:
    client.set(revoked_key(jti), 1, ex=max(1, ttl_s))


def revoke_family(client: redis.Redis, family: str, *, ttl_s: int) -> None:
    """Every token of the family, access and refresh, is refused from now on; `ttl_s`:
    as long as the longest-lived of them (a refresh token issued now) would be valid."""
    client.set(family_revoked_key(family), 1, ex=max(1, ttl_s))


def family_revoked_key(family: str) -> str:
    return _REVOKED_FAMILY_PREFIX + family


def revoked_key(jti: str) -> str:
    return _REVOKED_PREFIX + jti


def revocation_keys(jti: str, family: str | None) -> list[str]:
    """The keys whose existence revokes the token `jti` of `family` (None: no family)."""
    return [revoked_key(jti), family_revoked_key(family) if family else _NO_KEY]


class Gate:
    def __init__(
        self,
        client: redis.Redis,
        limits: str | None,
        *,
        revocation_recheck_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        reload_and_check: Callable[[str, str | None], bool | None] | None = None,
    ) -> None:
        """`clock`: the wall-clock time the windows are counted by (tests move their own).
        `reload_and_check(jti, family)`: asked when Redis has lost the revocations; it
        fills Redis again and answers for the token (None: still unknown, a 503)."""
        self._clock = clock
        self._reload_and_check = reload_and_check
        self._limits: list[RateLimitItem] = list(parse_many(limits)) if limits else []
        self._script = client.register_script(_SCRIPT)
        self._memory = _MemoryCounters()
        self._recheck_s = revocation_recheck_s
        self._leases: dict[str, list[_Lease | None]] = {}
        self._checked: dict[str, float] = {}  # token id -> when Redis last said "not revoked"
        self._families: dict[str, set[str]] = {}  # family -> its token ids in `_checked`
        self._redis_after = 0.0  # monotonic time before which Redis is not tried
        self._backoff_s = 0.0
        self._lock = threading.Lock()

    def check(self, key: str, *, jti: str | None, family: str | None = None) -> Verdict:
        """Count one request of `key` (a user or an address) and check the token `jti`, of
        `family` (None: a token from before families, or not a token)."""
        if not self._limits and (jti is None or self._fresh(jti)):
            return Verdict(revoked=False, allowed=True)
        now = self._clock()
        local = self._spend_leased(key, jti, now)
        if local is not None:
            return local
        if time.monotonic() >= self._redis_after:
            try:
                verdict = self._check_redis(key, jti, family, now)
            except redis.RedisError as error:
                self._redis_failed(error)
            else:
                self._backoff_s = 0.0
                return verdict
        revoked = False if jti is None or self._fresh(jti) else None
        return self._memory.check(self._limits, key, now, revoked=revoked)

    def forget(self, jti: str) -> None:
        """The token was just revoked through this process: ask Redis next time."""
        with self._lock:
            self._checked.pop(jti, None)

    def forget_family(self, family: str) -> None:
        """The family was just revoked through this process: ask Redis about its tokens."""
        with self._lock:
            for jti in self._families.pop(family, ()):
                self._checked.pop(jti, None)

    def _fresh(self, jti: str) -> bool:
        checked = self._checked.get(jti)
        return checked is not None and time.monotonic() - checked < self._recheck_s

    def _spend_leased(self, key: str, jti: str | None, now: float) -> Verdict | None:
        """The verdict from this process's leases alone, or None when Redis must be asked."""
        if jti is not None and not self._fresh(jti):
            return None
        with self._lock:
            leases = self._leases.get(key)
            if leases is None or any(
                _spent(item, lease, now) for item, lease in zip(self._limits, leases, strict=True)
            ):
                return None
            for lease in leases:
                assert lease is not None
                lease.unspent -= 1
            return self._verdict(leases, now)

    def _check_redis(self, key: str, jti: str | None, family: str | None, now: float) -> Verdict:
        check_token = jti is not None and not self._fresh(jti)
        keys = revocation_keys(jti, family) if jti is not None and check_token else [_NO_KEY] * 2
        keys.append(REVOCATIONS_LOADED_KEY)
        args: list[str | int | float] = ["1" if check_token else "0"]
        with self._lock:
            leases = self._leases.get(key) or [None] * len(self._limits)
            wanted = [
                lease_size(item) if _spent(item, lease, now) else 0
                for item, lease in zip(self._limits, leases, strict=True)
            ]
        for item, amount_wanted in zip(self._limits, wanted, strict=True):
            current, previous, elapsed = _windows(item, key, now)
            keys += [current, previous]
            args += [item.amount, item.get_expiry(), elapsed, amount_wanted]
        answer = self._script(keys=keys, args=args)
        if answer[0] == 1:
            return Verdict(revoked=True, allowed=True)
        revoked: bool | None = False
        if jti is not None and answer[0] == _UNKNOWN:  # rare: Redis has lost them
            revoked = self._reload_and_check(jti, family) if self._reload_and_check else None
            if revoked:
                return Verdict(revoked=True, allowed=True)
        if jti is not None and check_token and revoked is False:
            self._remember_checked(jti, family)
        verdict = self._counted(key, wanted, answer, now)
        return verdict if revoked is False else replace(verdict, revoked=revoked)

    def _remember_checked(self, jti: str, family: str | None) -> None:
        with self._lock:
            if len(self._checked) >= _REMEMBERED:
                self._checked.clear()
                self._families.clear()
            self._checked[jti] = time.monotonic()
            if family is not None:
                self._families.setdefault(family, set()).add(jti)

    def _counted(self, key: str, wanted: list[int], answer: list[Any], now: float) -> Verdict:
        """The verdict of the limits from the script's answer, leases kept for later."""
        _, allowed, _, *pairs = answer
        if not allowed:
            counted = [
                (item, int(pairs[2 * i]), int(pairs[2 * i + 1]))
                for i, item in enumerate(self._limits)
                if wanted[i]
            ]
            return _refused(counted, now, revoked=False)
        with self._lock:
            if key not in self._leases and len(self._leases) >= _REMEMBERED:
                self._leases.clear()
            leases = self._leases.setdefault(key, [None] * len(self._limits))
            for i, item in enumerate(self._limits):
                window, granted, count = (
                    _index(item, now),
                    int(pairs[2 * i]),
                    float(pairs[2 * i + 1]),
                )
                lease = leases[i]
                if lease is None or lease.window != window:
                    lease = leases[i] = _Lease(window, 0, count)
                lease.unspent += granted - 1
                lease.count = count
            return self._verdict(leases, now)

    def _verdict(self, leases: list[_Lease | None], now: float) -> Verdict:
        """An allowed request's verdict: the limit with the least left, for the headers.
        Left = the shared budget not yet leased, plus what this process holds unspent."""
        if not self._limits:
            return Verdict(revoked=False, allowed=True)
        left = []
        for item, lease in zip(self._limits, leases, strict=True):
            assert lease is not None  # every limit has its lease once a request is allowed
            left.append(math.floor(item.amount - lease.count) + max(0, lease.unspent))
        tightest = min(range(len(left)), key=left.__getitem__)
        item = self._limits[tightest]
        return Verdict(
            revoked=False,
            allowed=True,
            limit=item,
            remaining=max(0, left[tightest]),
            reset_in_s=_restored_in(item, now),
        )

    def _redis_failed(self, error: Exception) -> None:
        with self._lock:
            self._backoff_s = min(_MAX_BACKOFF_S, max(1.0, self._backoff_s * 2))
            self._redis_after = time.monotonic() + self._backoff_s
        log.warning(
            "gate.redis_unavailable",
            error=type(error).__name__,
            retry_in_s=self._backoff_s,
            detail="tokens cannot be checked; rate limits count in this process's memory",
        )


class _MemoryCounters:
    """The same sliding-window counters in this process, while Redis is away."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(
        self, limits: list[RateLimitItem], key: str, now: float, *, revoked: bool | None
    ) -> Verdict:
        with self._lock:
            if len(self._counts) > 100_000:  # windows long gone; a rare sweep is enough
                self._counts.clear()
            seen = []
            for item in limits:
                current_key, previous_key, elapsed = _windows(item, key, now)
                window = item.get_expiry()
                previous = self._counts.get(previous_key, 0)
                current = self._counts.get(current_key, 0)
                count = previous * (window - elapsed) / window + current
                seen.append((item, current_key, previous, current, count))
            allowed = all(count + 1 <= item.amount for item, *_, count in seen)
            if allowed:
                for _, current_key, *_ in seen:
                    self._counts[current_key] = self._counts.get(current_key, 0) + 1
        if not seen:
            return Verdict(revoked=revoked, allowed=True)
        if not allowed:
            counted = [(item, previous, current) for item, _, previous, current, _ in seen]
            return _refused(counted, now, revoked=revoked)
        item, *_, count = min(seen, key=lambda s: s[0].amount - s[-1])
        return Verdict(
            revoked=revoked,
            allowed=True,
            limit=item,
            remaining=max(0, math.floor(item.amount - count - 1)),
            reset_in_s=_restored_in(item, now),
        )
