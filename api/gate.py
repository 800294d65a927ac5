"""The one Redis round trip of a `/v1` request: is its bearer token revoked, and is its
caller within the rate limit (`RATE_LIMIT_DEFAULT`)?

Both used to be separate calls (a revocation lookup, a limiter script, and a second read
for the RateLimit headers); a profile of `POST /v1/jobs` put them at a fifth of the web's
CPU. One Lua script now answers both, and also what the headers need.

Limits are sliding-window counters (the `limits` library's "sliding-window-counter"
algorithm, which Flask-Limiter used here before): the count of the previous fixed window,
weighted by how much of it still overlaps the sliding window, plus the current window's.
Several limits ("100/second;6000/minute") are checked together; a request counts against
all of them only when all allow it.

Redis away: a token cannot be checked (the caller answers 503), and limits are counted in
this process's memory, so they hold per process instead of for the whole server; Redis is
tried again after 1, 2, 4 ... 32 s.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import redis
import structlog
from limits import RateLimitItem, parse_many

log = structlog.get_logger("conveyor.api")

_REVOKED_PREFIX = "conveyor:revoked:"
_COUNTER_PREFIX = "conveyor:gate:"
_NO_KEY = "conveyor:gate:-"  # stands in for "no token to check" (scripts take fixed KEYS)
_MAX_BACKOFF_S = 32.0

# KEYS: revocation key, then (current window, previous window) per limit.
# ARGV: check revocation (0/1), then (amount, window_s, elapsed_s) per limit.
# Returns {revoked, allowed, limit index (1-based) of the tightest one, its weighted count}.
_SCRIPT = """
if ARGV[1] == "1" and redis.call("EXISTS", KEYS[1]) == 1 then
  return {1, 0, 0, 0}
end
local tightest, tightest_left, tightest_count, allowed = 0, math.huge, 0, 1
local counts = {}
for i = 1, (#ARGV - 1) / 3 do
  local amount, window, elapsed = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local current = tonumber(redis.call("GET", KEYS[2*i]) or "0")
  local previous = tonumber(redis.call("GET", KEYS[2*i+1]) or "0")
  local count = previous * (window - elapsed) / window + current
  counts[i] = count
  if count + 1 > amount then allowed = 0 end
  if amount - count < tightest_left then
    tightest, tightest_left, tightest_count = i, amount - count, count
  end
end
if allowed == 1 then
  for i = 1, (#ARGV - 1) / 3 do
    if redis.call("INCR", KEYS[2*i]) == 1 then
      redis.call("EXPIRE", KEYS[2*i], 2 * tonumber(ARGV[3*i]))
    end
  end
  tightest_count = tightest_count + 1
end
return {0, allowed, tightest, tostring(tightest_count)}
"""


@dataclass(frozen=True)
class Verdict:
    """`revoked` is None when it could not be checked (or no token was given: False)."""

    revoked: bool | None
    allowed: bool
    limit: RateLimitItem | None = None
    remaining: int = 0
    reset_in_s: int = 0

    @property
    def policy(self) -> str:
        assert self.limit is not None
        return f"{self.limit.amount};w={self.limit.get_expiry()}"


def _windows(item: RateLimitItem, key: str, now: float) -> tuple[str, str, float]:
    window = item.get_expiry()
    index = int(now // window)
    base = f"{_COUNTER_PREFIX}{window}:{key}:"
    return f"{base}{index}", f"{base}{index - 1}", now - index * window


def _reset_in(item: RateLimitItem, elapsed: float) -> int:
    """Seconds until the current window rolls over: a hint, as the weighted previous
    window may still hold a refused caller back a little longer."""
    return max(0, math.ceil(item.get_expiry() - elapsed))


def revoke(client: redis.Redis, jti: str, *, ttl_s: int) -> None:
    client.set(_REVOKED_PREFIX + jti, 1, ex=max(1, ttl_s))


def is_revoked(client: redis.Redis, jti: str) -> bool:
    return bool(client.exists(_REVOKED_PREFIX + jti))


class Gate:
    def __init__(self, client: redis.Redis, limits: str | None) -> None:
        self._limits: list[RateLimitItem] = list(parse_many(limits)) if limits else []
        self._script = client.register_script(_SCRIPT)
        self._memory = _MemoryCounters()
        self._redis_after = 0.0  # monotonic time before which Redis is not tried
        self._backoff_s = 0.0
        self._lock = threading.Lock()

    def check(self, key: str, *, jti: str | None) -> Verdict:
        """Count one request of `key` (a user or an address) and check the token `jti`."""
        if not self._limits and jti is None:
            return Verdict(revoked=False, allowed=True)
        if time.monotonic() >= self._redis_after:
            try:
                verdict = self._check_redis(key, jti)
            except redis.RedisError as error:
                self._redis_failed(error)
            else:
                self._backoff_s = 0.0
                return verdict
        return self._memory.check(self._limits, key, revoked=None if jti else False)

    def _check_redis(self, key: str, jti: str | None) -> Verdict:
        now = time.time()
        keys = [_REVOKED_PREFIX + jti if jti else _NO_KEY]
        args: list[str | int | float] = ["1" if jti else "0"]
        elapsed_by_limit = []
        for item in self._limits:
            current, previous, elapsed = _windows(item, key, now)
            keys += [current, previous]
            args += [item.amount, item.get_expiry(), elapsed]
            elapsed_by_limit.append(elapsed)
        revoked, allowed, index, count = self._script(keys=keys, args=args)
        if revoked:
            return Verdict(revoked=True, allowed=True)
        if not index:
            return Verdict(revoked=False, allowed=True)
        item = self._limits[int(index) - 1]
        count_f = float(count)
        elapsed = elapsed_by_limit[int(index) - 1]
        return Verdict(
            revoked=False,
            allowed=bool(allowed),
            limit=item,
            remaining=max(0, math.floor(item.amount - count_f)),
            reset_in_s=_reset_in(item, elapsed),
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

    def check(self, limits: list[RateLimitItem], key: str, *, revoked: bool | None) -> Verdict:
        now = time.time()
        with self._lock:
            if len(self._counts) > 100_000:  # windows long gone; a rare sweep is enough
                self._counts.clear()
            seen = []
            for item in limits:
                current, previous, elapsed = _windows(item, key, now)
                window = item.get_expiry()
                prior = self._counts.get(previous, 0)
                count = prior * (window - elapsed) / window + self._counts.get(current, 0)
                seen.append((item, current, elapsed, count))
            allowed = all(count + 1 <= item.amount for item, _, _, count in seen)
            if allowed:
                for _, current, *_ in seen:
                    self._counts[current] = self._counts.get(current, 0) + 1
        if not seen:
            return Verdict(revoked=revoked, allowed=True)
        item, _, elapsed, count = min(seen, key=lambda s: s[0].amount - s[3])
        count += 1 if allowed else 0
        return Verdict(
            revoked=revoked,
            allowed=allowed,
            limit=item,
            remaining=max(0, math.floor(item.amount - count)),
            reset_in_s=_reset_in(item, elapsed),
        )
