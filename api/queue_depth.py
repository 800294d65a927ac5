"""How many messages wait in a Celery queue, read from Redis and cached for a moment.

Backpressure needs an answer per submit; LLEN costs a round trip, so one reading serves
every submit of this process for `ttl_s`. The queue may overshoot the limit by what
arrives in that window, which is what a soft limit is for.
"""

from __future__ import annotations

import threading
import time

import redis


class QueueDepth:
    """`client` should give up quickly (`api.runtime.make_redis` with a short timeout): a
    submit waits for it at most once per `ttl_s`, and only one at a time does."""

    def __init__(
        self, client: redis.Redis, queue: str, *, ttl_s: float = 0.25, stale_s: float = 1.0
    ) -> None:
        self._client = client
        self._queue = queue
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._lock = threading.Lock()
        self._value = 0
        self._read_at = float("-inf")

    def __call__(self) -> int:
        """The depth; raises a Redis error (503) when it cannot be known. While one thread
        reads it, the others take the last reading if it is younger than `stale_s`, and
        else fail at once: they used to queue on the lock, each then waiting out its own
        read of a Redis that hung (ten submits stalled a hundred seconds)."""
        now = time.monotonic()
        if now - self._read_at < self._ttl_s:
            return self._value
        if not self._lock.acquire(blocking=False):
            if now - self._read_at < self._stale_s:
                return self._value
            raise redis.TimeoutError("the queue's depth is unknown: Redis is slow to answer")
        try:
            if time.monotonic() - self._read_at >= self._ttl_s:
                self._value = int(self._client.llen(self._queue))
                self._read_at = time.monotonic()
            return self._value
        finally:
            self._lock.release()
