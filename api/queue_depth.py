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
    def __init__(self, client: redis.Redis, queue: str, *, ttl_s: float = 0.25) -> None:
        self._client = client
        self._queue = queue
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value = 0
        self._read_at = float("-inf")

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._read_at < self._ttl_s:
            return self._value
        with self._lock:
            if now - self._read_at >= self._ttl_s:
                self._value = int(self._client.llen(self._queue))
                self._read_at = time.monotonic()
            return self._value
