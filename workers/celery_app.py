"""The Celery configuration shared by workers, beat, Flower and the API's producer.

It imports no task module: `include` names them, and Celery imports them in the worker.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import redis
import structlog
from celery import Celery
from kombu import Exchange, Queue
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.db import OneStatement
from services import after_commit
from workers.publisher import BackgroundPublisher, TaskPublisher

QUEUES = ("agents", "events", "webhooks", "maintenance")
# The message header that carries the id of the HTTP request (or of the task) that caused a
# task, so the worker's log lines name it (workers/operations.py binds it).
REQUEST_ID_HEADER = "conveyor_request_id"
TASK_MODULES = ("tasks.jobs", "tasks.maintenance", "tasks.events", "tasks.webhooks")


def default_worker_concurrency() -> int:
    """Two pool processes per usable core, where Celery's own default is one per core of
    the machine. An agent's job mostly waits (on a model, on PostgreSQL's commits, on
    Redis), and with one process per core the cores idled while jobs waited: echo jobs end
    to end went from 217-299 to 285-355 jobs/s on 2 cores with 4 processes
    (docs/DECISIONS.md), for about 19 MB of memory (PSS) per process more."""
    return 2 * usable_cpus()


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: those it may run on, and no more than its cgroup's
    CPU quota. A container limited to 2 CPUs on a 64-core host reports 64 from
    `os.cpu_count()`, and a pool sized from that would hold 128 processes' memory and up
    to four PostgreSQL connections each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = cores or os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota == "max":  # no quota
            return cores
        limit = math.ceil(int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):  # no cgroup v2 controller, or unreadable
        return cores
    return max(1, min(cores, limit))


def make_celery(
    *,
    broker_url: str,
    sweep_interval_s: float = 5.0,
    worker_concurrency: int | None = None,
    max_memory_per_child_mb: int = 0,
    beat_schedule_file: str = "celerybeat-schedule",
) -> Celery:
    app = Celery("conveyor", broker=broker_url, include=list(TASK_MODULES))
    app.conf.update(
        # A worker's `--concurrency` still wins over this.
        worker_concurrency=worker_concurrency or default_worker_concurrency(),
        # kombu's Redis transport, keeping one publishing client (workers/broker.py).
        broker_transport="workers.broker:Transport",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # One direct exchange per queue: a message published to one queue lands in it alone.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        task_default_queue="agents",
        # At-least-once: a message is acknowledged only when its task has returned, and is
        # handed back if the worker process dies. Our claims make redelivery harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # billiard checks the pool process's peak RSS after each task and replaces it past
        # this (KiB); the task's result and acknowledgement are sent first.
        worker_max_memory_per_child=max_memory_per_child_mb * 1024 or None,
        # Flower follows tasks from the worker's events. The publisher's task-sent event is
        # off: it is a second Redis publish per submit (7 % of the web's CPU in a profile),
        # and Flower shows a task from "received" on.
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Unacknowledged messages come back after this long; the job sweeper usually
            # re-publishes far sooner, so this is only the last line of defence.
            "visibility_timeout": 3600,
            "max_connections": 64,
        },
        broker_pool_limit=16,
        # Where beat keeps its schedule; a `--schedule` on its command line still wins.
        beat_schedule_filename=beat_schedule_file,
        # Beat writes the file after every message it sends (each SWEEP_INTERVAL_S), so its
        # age is a health check (docs/operations.md, compose's: younger than 120 s). Celery
        # otherwise writes it every 3 minutes, and a healthy beat looked dead for one in three.
        beat_sync_every=1,
        beat_schedule={
            "sweep-jobs": {
                "task": "conveyor.maintenance.sweep_jobs",
                "schedule": sweep_interval_s,
                "options": {"queue": "maintenance", "expires": sweep_interval_s * 2},
            },
            "sweep-webhooks": {
                "task": "conveyor.webhooks.sweep",
                "schedule": sweep_interval_s,
                "options": {"queue": "maintenance", "expires": sweep_interval_s * 2},
            },
            # Expired revocations go within the hour; nothing reads them but the reload.
            "sweep-token-revocations": {
                "task": "conveyor.maintenance.sweep_token_revocations",
                "schedule": 600.0,
                "options": {"queue": "maintenance", "expires": 300},
            },
        },
    )
    return app


def trace_headers() -> dict[str, str]:
    """The request id bound to this thread's log context (a request's, or a task's)."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return {REQUEST_ID_HEADER: str(request_id)} if request_id else {}


class AfterCommit(NamedTuple):
    """What `install_after_commit` set up: the dispatcher (for units of work that are not
    sessions of the factories, models.db.OneStatement) and the background publisher."""

    dispatch: after_commit.Dispatcher
    background: BackgroundPublisher | None

    def single_statement(self, engine: Engine) -> Callable[[], OneStatement]:
        """Units of work on `engine` for one-statement work (models.db.OneStatement), whose
        commits set off what the sessions' commits do."""
        on_commit = functools.partial(after_commit.committed, dispatch=self.dispatch)
        return lambda: OneStatement(engine, on_commit)


def install_after_commit(
    factories: Sequence[sessionmaker[Session]],
    app: Celery,
    announcer: redis.Redis,
    *,
    fault_injection: str | None = None,
    in_background: bool = False,
) -> AfterCommit:
    """Publish deferred tasks (to `app`'s queues, written by workers/publisher.py onto the
    broker, which is the Redis of `announcer`) and announce changes, after commits of
    sessions of `factories`. `in_background` (the web's choice): from one thread, which is
    returned, so that callers can wait for it (`flush`)."""
    log = structlog.get_logger("conveyor.after_commit")
    publisher = TaskPublisher(announcer, reply_to=app.thread_oid)
    background = BackgroundPublisher(publisher) if in_background else None
    send = background.publish if background is not None else publisher.publish
    dispatch = after_commit.make_dispatcher(
        publish=lambda tasks, announcements: send(tasks, announcements, trace_headers()),
        on_error=lambda message, error: log.warning(
            "after_commit.dispatch_failed", message=repr(message), error=repr(error)
        ),
    )
    if fault_injection == "exit_before_publish":
        dispatch = _exit_before_publish
    for factory in factories:
        after_commit.install(factory, dispatch)
    return AfterCommit(dispatch, background)


def _exit_before_publish(messages: Sequence[after_commit.Message]) -> None:
    """The fault tests' crash between commit and publish: the row exists, no message does."""
    if any(isinstance(m, after_commit.SendTask) for m in messages):
        os._exit(17)
