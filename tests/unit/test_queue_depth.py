"""The queue depth submits read (api/queue_depth.py) when Redis stops answering."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from api.queue_depth import QueueDepth
from workers.redis_clients import make_redis


def test_submits_do_not_queue_behind_a_redis_that_does_not_answer():
    """They waited on one lock, each then waiting out its own read: the tenth submit of a
    burst answered after twenty seconds. One reads; the others share its failure (503)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        depth = QueueDepth(make_redis(f"redis://127.0.0.1:{port}/0", timeout_s=1), "agents")

        def ask(_: int) -> float:
            started = time.monotonic()
            with pytest.raises(redis.RedisError):
                depth()
            return time.monotonic() - started

        with ThreadPoolExecutor(10) as pool:
            waits = sorted(pool.map(ask, range(10)))
    assert waits[-1] < 4  # one read: a timeout of 1 s and one retry, not ten in turn


def test_a_burst_of_first_readers_all_get_the_depth(redis_url):
    """Not refused because another thread was reading it: they wait for its reading."""
    depth = QueueDepth(make_redis(redis_url, timeout_s=1), f"burst-{time.monotonic_ns()}")
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(lambda _: depth(), range(64))) == [0] * 64


def test_the_depth_is_read_from_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = f"depth-test-{time.monotonic_ns()}"
    client.rpush(queue, "a", "b", "c")
    try:
        assert QueueDepth(make_redis(redis_url, timeout_s=1), queue)() == 3
    finally:
        client.delete(queue)
