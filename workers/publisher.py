"""Task messages written straight to the Redis broker, in one pipeline with the commit's
announcements.

`Celery.send_task` took about 15 % of the web's CPU per `POST /v1/jobs` in a profile, of
which the Redis command itself was a quarter: building the message through Celery, kombu's
producer pool, exchange declarations and routing costs more than sending it. The messages
here are what that path writes for our tasks — Celery's task message protocol 2 (headers,
`[args, kwargs, embed]` body) in kombu's Redis transport envelope, LPUSHed onto the list
named after the queue, which is what a worker BRPOPs — so workers cannot tell them apart.
`tests/unit/test_publisher.py` compares both, field by field, so an upgrade of Celery or
kombu that changes the format fails there first.
"""

from __future__ import annotations

import atexit
import base64
import datetime as dt
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis
import structlog

from models.ids import random_uuid
from services.after_commit import SendTask

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
log = structlog.get_logger("conveyor.after_commit")

Announcement = tuple[str, str]  # (channel, payload)
# What one commit publishes: its tasks, its announcements, the headers its tasks carry.
Batch = tuple[Sequence[SendTask], Sequence[Announcement], Mapping[str, str]]


class TaskPublisher:
    def __init__(self, client: redis.Redis, *, reply_to: str) -> None:
        self._client = client
        self._reply_to = reply_to  # Celery's `app.thread_oid`; unused without results
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"

    def message(self, task: SendTask, headers: Mapping[str, str]) -> bytes:
        """The broker's bytes for `task`, with our extra `headers` (the request id)."""
        task_id = str(random_uuid())
        options = task.options
        countdown = options.get("countdown")
        eta = (
            (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=countdown)).isoformat()
            if countdown
            else None
        )
        argsrepr = repr(task.args)
        body = orjson.dumps([list(task.args), {}, _EMBED])
        envelope: dict[str, Any] = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task.name,
                "id": task_id,
                "shadow": None,
                "eta": eta,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [options.get("time_limit"), options.get("soft_time_limit")],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": argsrepr,
                "kwargsrepr": "{}",
                "origin": self._origin,
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
                **headers,
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": self._reply_to,
                "argsrepr": argsrepr,
                "kwargsrepr": "{}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": task.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(random_uuid()),
            },
        }
        return orjson.dumps(envelope)

    def publish(
        self,
        tasks: Sequence[SendTask],
        announcements: Sequence[Announcement],
        headers: Mapping[str, str],
    ) -> list[Exception | None]:
        """Send everything in one round trip; the outcome of each task, then of each
        announcement, in order (None: sent)."""
        return self.publish_many([(tasks, announcements, headers)])

    def publish_many(self, batches: Sequence[Batch]) -> list[Exception | None]:
        """Several commits' messages in one round trip; outcomes in order, batch by batch."""
        with self._client.pipeline(transaction=False) as pipe:
            for tasks, announcements, headers in batches:
                for task in tasks:
                    pipe.lpush(task.queue, self.message(task, headers))
                for channel, payload in announcements:
                    pipe.publish(channel, payload)
            results = pipe.execute(raise_on_error=False)
        return [r if isinstance(r, Exception) else None for r in results]


class BackgroundPublisher:
    """The web's publisher: a request hands its commit's messages to one thread per process
    and answers at once; the thread sends whatever has gathered meanwhile in one pipeline.

    Publishing in the request cost a fifth of `POST /v1/jobs`'s CPU in-process (a Redis
    round trip per submit, and the thread's wait for it). Nothing is lost that was not
    already at risk: a message that never leaves (the process dies first, Redis is away)
    belongs to a committed job the sweeper re-publishes after `JOB_REPUBLISH_AFTER_S`, as
    for a crash between commit and publish before. A process that exits normally sends what
    is pending first (atexit, up to `flush_timeout_s`).
    """

    def __init__(self, publisher: TaskPublisher, *, flush_timeout_s: float = 5.0) -> None:
        self._publisher = publisher
        self._flush_timeout_s = flush_timeout_s
        self._pending: list[Batch] = []
        self._sending = False
        self._changed = threading.Condition()
        self._pid: int | None = None  # the process whose thread sends (threads die in a fork)

    def publish(
        self,
        tasks: Sequence[SendTask],
        announcements: Sequence[Announcement],
        headers: Mapping[str, str],
    ) -> list[Exception | None]:
        """Queue the messages; the answer (None each) means handed over, not sent: the
        sending thread reports failures itself."""
        with self._changed:
            if self._pid != os.getpid():
                self._start()
            self._pending.append((tasks, announcements, dict(headers)))
            self._changed.notify_all()
        return [None] * (len(tasks) + len(announcements))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything handed over so far has been sent (or has failed)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._pending and not self._sending,
                timeout=self._flush_timeout_s if timeout_s is None else timeout_s,
            )

    def _start(self) -> None:
        self._pid = os.getpid()
        self._pending, self._sending = [], False
        threading.Thread(target=self._run, name="task-publisher", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                batches, self._pending, self._sending = self._pending, [], True
            try:
                self._send(batches)
            finally:
                with self._changed:
                    self._sending = False
                    self._changed.notify_all()

    def _send(self, batches: list[Batch]) -> None:
        try:
            outcomes = self._publisher.publish_many(batches)
        except Exception as error:  # the whole pipeline failed: Redis away
            outcomes = [error] * sum(len(t) + len(a) for t, a, _ in batches)
        messages = [m for tasks, announcements, _ in batches for m in (*tasks, *announcements)]
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome is not None:
                log.warning(
                    "after_commit.dispatch_failed", message=repr(message), error=repr(outcome)
                )
