"""Long-poll support: hold an answer until a job ends, without holding a database connection.

The waiter subscribes to the job's Redis channel first and reads the job second, so a
change that lands between the two is never missed. Between reads no session is open.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import redis

from models import Job
from services.after_commit import job_channel
from services.jobs import is_terminal

ReadJob = Callable[[], Job]


def wait_until_terminal(
    client: redis.Redis, job_id: uuid.UUID, read: ReadJob, wait_s: float
) -> Job:
    """The job once terminal, or as it is when `wait_s` has passed."""
    job = read()
    if wait_s <= 0 or is_terminal(job.status):
        return job
    deadline = time.monotonic() + wait_s
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(job_channel(job_id))
        job = read()
        while not is_terminal(job.status):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if pubsub.get_message(timeout=min(remaining, 1.0)) is not None:
                job = read()
    finally:
        pubsub.close()
    return job
