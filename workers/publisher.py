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

import base64
import datetime as dt
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from services.after_commit import SendTask

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class TaskPublisher:
    def __init__(self, client: redis.Redis, *, reply_to: str) -> None:
        self._client = client
        self._reply_to = reply_to  # Celery's `app.thread_oid`; unused without results
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"

    def message(self, task: SendTask, headers: Mapping[str, str]) -> bytes:
        """The broker's bytes for `task`, with our extra `headers` (the request id)."""
        task_id = str(uuid.uuid4())
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
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return orjson.dumps(envelope)

    def publish(
        self,
        tasks: Sequence[SendTask],
        announcements: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> list[Exception | None]:
        """Send everything in one round trip; the outcome of each task, then of each
        announcement, in order (None: sent)."""
        with self._client.pipeline(transaction=False) as pipe:
            for task in tasks:
                pipe.lpush(task.queue, self.message(task, headers))
            for channel, payload in announcements:
                pipe.publish(channel, payload)
            results = pipe.execute(raise_on_error=False)
        return [r if isinstance(r, Exception) else None for r in results]
