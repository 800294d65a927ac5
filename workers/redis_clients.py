"""Redis clients that give up: the web's and the worker's, built by their composition roots.

A Redis that stops answering without closing its connections (a network partition, a
paused VM) must not hold whatever called it: in the worker, the publish after a job's
commit, and with it the pool process. These clients fail after their timeout, and the
caller's own recovery takes over (a failed dispatch is logged; the sweepers publish again
what was not). redis-py 8 already gives a socket 5 s by default, but its defaults have
changed between releases (earlier ones waited for ever), so both roots say what they mean.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def make_redis(url: str, *, timeout_s: float) -> redis.Redis:
    """A client that retries once, quickly, then fails: a request should answer 503
    promptly when Redis is away, not sit in redis-py's default backoff for seconds."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, 1.0),
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    )
