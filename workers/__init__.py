"""Composition root of the worker, beat and Flower processes: `celery -A workers ...`."""

from __future__ import annotations

import gc
from typing import Any

import structlog
from celery import signals

from models.db import make_engine, make_session_factory
from services.agent_runner import AgentRunner
from services.agent_tools import ToolBox
from services.chat_runner import ChatRunner
from services.llm import Providers
from services.log_config import configure_logging
from settings import load_settings, renamed_variables_in_use
from tasks.deps import TaskDeps
from workers import operations
from workers.celery_app import install_after_commit, make_celery
from workers.redis_clients import make_redis

settings = load_settings()
log = structlog.get_logger("conveyor.workers")
REDIS_TIMEOUT_S = 5.0  # as the web's client (api/__init__.py)

celery = make_celery(
    broker_url=settings.redis_url,
    sweep_interval_s=settings.sweep_interval_s,
    worker_concurrency=settings.worker_concurrency,
    max_memory_per_child_mb=settings.worker_max_memory_per_child_mb,
    beat_schedule_file=settings.beat_schedule_file,
)
app = celery  # `celery -A workers` looks for `app` or `celery`
operations.configure(celery, settings)  # Flower's guard, task log context, metrics, shutdown


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings.log_level)
    # Here, once logging writes JSON: once per worker or beat (the pool's processes fork
    # with logging set up and skip this signal).
    for old, new in renamed_variables_in_use().items():
        log.warning("settings.renamed_variable", variable=old, renamed_to=new, deprecated=True)


engine = make_engine(settings.database_url, pool_size=2)


def _build_deps() -> TaskDeps:
    session_factory = make_session_factory(engine)
    after_commit = install_after_commit(
        [session_factory],
        celery,
        # A Redis that stops answering fails the publish after 5 s instead of holding the
        # pool process (workers/redis_clients.py).
        make_redis(settings.redis_url, timeout_s=REDIS_TIMEOUT_S),
        fault_injection=settings.fault_injection,
    )
    tools = ToolBox(
        session_factory,
        settings.document_limits(),
        settings.json_limits(),
        event_max_data_bytes=settings.event_max_data_bytes,
    )
    runner = AgentRunner(ChatRunner(Providers(settings.llm_providers()), tools))
    return TaskDeps(
        session_factory=session_factory,
        job_policy=settings.job_policy(),
        runner=runner,
        webhook_policy=settings.webhook_policy(),
        single_statement=after_commit.single_statement(engine),
    )


celery.conveyor = _build_deps()  # type: ignore[attr-defined]


@signals.worker_init.connect
def _freeze_heap_before_forking_the_pool(**_: Any) -> None:
    # The pool's processes fork from this one after this signal. Objects the collector
    # never visits again are pages it never writes, so they stay shared (PSS, issue 10).
    gc.collect()
    gc.freeze()


@signals.worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool process must not share the parent's sockets to PostgreSQL.
    engine.dispose(close=False)
