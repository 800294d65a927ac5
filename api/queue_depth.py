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
    """`client` should give up quickly (`workers.redis_clients.make_redis` with a short timeout)."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        *,
        ttl_s: float = 0.25,
        stale_s: float = 1.0,
        wait_s: float = 2.5,
    ) -> None:
        self._client = client
        self._queue = queue
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._wait_s = wait_s  # longer than one read can take: a timeout and a retry
        self._lock = threading.Lock()
        self._value = 0
        self._read_at = float("-inf")
        self._failed_at = float("-inf")

    def __call__(self) -> int:
        """The depth; raises a Redis error (503) when it cannot be known.

        One thread reads at a time. The others take the last reading while it is younger
        than `stale_s`, or wait for the reader, and share its failure as well as its
        reading: they used to queue on a lock, each then waiting out a read of its own,
        and behind a Redis that did not answer the tenth submit of a burst answered after
        twenty seconds."""
        now = time.monotonic()
        if now - self._read_at < self._ttl_s:
            return self._value
        if not self._lock.acquire(blocking=False):
            if now - self._read_at < self._stale_s:
                return self._value
            if not self._lock.acquire(timeout=self._wait_s):
                raise redis.TimeoutError("the queue's depth is unknown: Redis is slow")
        try:
            if time.monotonic() - self._read_at < self._ttl_s:
                return self._value  # read by the thread this one waited for
            if now - self._failed_at < self._ttl_s:  # failed just before, or while waited for
                raise redis.ConnectionError("the queue's depth could not be read just now")
            try:
                self._value = int(self._client.llen(self._queue))
            except redis.RedisError:
                self._failed_at = time.monotonic()
                raise
            self._read_at = time.monotonic()
            return self._value
        finally:
            self._lock.release()
