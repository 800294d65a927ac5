"""Task messages written by workers/publisher.py are the messages Celery itself would
publish for the same task, field by field, and a real worker runs them (the end-to-end
tests submit every job through this path)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import redis

from services.after_commit import SendTask
from workers.celery_app import make_celery
from workers.publisher import BackgroundPublisher, TaskPublisher

# Differ by nature between two messages: fresh ids, the publishing process, the send time.
FRESH = {"id", "root_id", "origin", "eta"}
FRESH_PROPERTIES = {"correlation_id", "delivery_tag"}


@pytest.fixture
def broker(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = f"test-publisher-{id(client)}"
    client.delete(queue)
    yield client, queue
    client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


def _decoded(raw: bytes) -> dict:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize(
    "options",
    [{}, {"soft_time_limit": 310, "time_limit": 320, "countdown": 2.5}],
    ids=["plain", "time limits and countdown"],
)
def test_messages_match_what_celery_publishes(broker, redis_url, options):
    client, queue = broker
    app = make_celery(broker_url=redis_url)
    task = SendTask("conveyor.jobs.run", queue, ("4c1f0000-0000-0000-0000-000000000001",), options)
    headers = {"conveyor_request_id": "req-1"}
    app.send_task(
        task.name,
        args=task.args,
        queue=queue,
        headers=headers,
        argsrepr=repr(task.args),
        kwargsrepr="{}",
        **options,
    )
    TaskPublisher(client, reply_to=app.thread_oid).publish([task], [], headers)
    ours, celerys = (_decoded(raw) for raw in client.lrange(queue, 0, -1))  # LPUSH: newest first

    for field in FRESH:
        assert (ours["headers"].pop(field) is None) == (celerys["headers"].pop(field) is None)
    for field in FRESH_PROPERTIES:
        ours["properties"].pop(field), celerys["properties"].pop(field)
    assert ours == celerys


def test_countdown_becomes_an_eta_that_far_ahead(broker):
    client, queue = broker
    before = dt.datetime.now(dt.UTC)
    TaskPublisher(client, reply_to="x").publish(
        [SendTask("t", queue, (), {"countdown": 30})], [], {}
    )
    eta = dt.datetime.fromisoformat(_decoded(client.lpop(queue))["headers"]["eta"])
    assert dt.timedelta(seconds=29) < eta - before < dt.timedelta(seconds=31)


def test_each_outcome_is_reported(broker):
    client, queue = broker
    outcomes = TaskPublisher(client, reply_to="x").publish(
        [SendTask("t", queue, ())], [("conveyor:test-channel", "x")], {}
    )
    assert outcomes == [None, None]
    assert client.llen(queue) == 1


def _args(client: redis.Redis, queue: str) -> list[str]:
    """The first argument of each message in `queue`, oldest first."""
    return [_decoded(raw)["body"][0][0] for raw in reversed(client.lrange(queue, 0, -1))]


def test_the_background_publisher_sends_what_threads_hand_over(broker):
    import threading

    client, queue = broker
    background = BackgroundPublisher(TaskPublisher(client, reply_to="x"))

    def hand_over(thread: int) -> None:
        for n in range(50):
            outcome = background.publish([SendTask("t", queue, (f"{thread}-{n}",))], [], {})
            assert outcome == [None]  # handed over

    threads = [threading.Thread(target=hand_over, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert background.flush(timeout_s=10)
    sent = _args(client, queue)
    assert sorted(sent) == sorted(f"{t}-{n}" for t in range(8) for n in range(50))
    for t in range(8):  # each thread's messages in the order it handed them over
        assert [a for a in sent if a.startswith(f"{t}-")] == [f"{t}-{n}" for n in range(50)]


def test_a_failed_send_is_logged_not_raised(capsys, caplog):
    from tests.stack import private_redis

    with private_redis() as server:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5)
        background = BackgroundPublisher(TaskPublisher(client, reply_to="x"))
        server.stop()
        assert background.publish([SendTask("t", "q", ("1",))], [], {}) == [None]
        assert background.flush(timeout_s=10)
        # On stdout once logging is configured (an app was made), else through stdlib logging.
        assert "after_commit.dispatch_failed" in capsys.readouterr().out + caplog.text
        server.start()  # the thread lives on: the next message goes out
        background.publish([SendTask("t", "q", ("2",))], [], {})
        assert background.flush(timeout_s=10)
        assert _args(client, "q") == ["2"]


def test_a_process_that_exits_sends_what_it_handed_over_first(broker, redis_url):
    import subprocess
    import sys
    import textwrap

    client, queue = broker
    script = textwrap.dedent(
        f"""
        import redis
        from services.after_commit import SendTask
        from workers.publisher import BackgroundPublisher, TaskPublisher

        client = redis.Redis.from_url({redis_url!r})
        background = BackgroundPublisher(TaskPublisher(client, reply_to="x"))
        for n in range(100):
            background.publish([SendTask("t", {queue!r}, (str(n),))], [], {{}})
        """  # exits at once: atexit flushes
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert _args(client, queue) == [str(n) for n in range(100)]
