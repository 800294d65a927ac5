"""What request handlers need from the process, built once by `create_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis
from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.gate import Gate
from api.notifier import Notifier
from api.queue_depth import QueueDepth
from api.revocation_store import RevocationStore
from models.db import UnitOfWork
from services.job_policy import JobPolicy
from services.passwords import Passwords
from services.webhook_policy import WebhookPolicy
from settings import Settings
from workers.publisher import BackgroundPublisher


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    # Units of work whose one statement commits by itself, for requests of one statement
    # (request_context.single_statement_db); tests pass their transactional factory here.
    single_statement: Callable[[], UnitOfWork]
    # Sends the Celery messages and announcements of commits, from its own thread.
    publisher: BackgroundPublisher
    redis: redis.Redis
    # A client whose every call gives up after a second: readiness must answer promptly.
    redis_probe: redis.Redis
    passwords: Passwords
    job_policy: JobPolicy
    webhook_policy: WebhookPolicy
    queue_depth: QueueDepth
    notifier: Notifier
    # Token revocation and rate limits in one Redis round trip per request.
    gate: Gate
    # Revocations written to PostgreSQL and Redis (logout, a reused refresh token).
    revocations: RevocationStore


def current_runtime() -> Runtime:
    """The runtime of the app handling this request."""
    runtime: Runtime = current_app.extensions["conveyor"]
    return runtime


def page_max_bytes() -> int:
    """`PAGE_MAX_BYTES`: lists of large items (jobs, events, agents, deliveries) end their
    pages by bytes too (services.pagination.ByteBound)."""
    return current_runtime().settings.page_max_bytes


def live_page_max_bytes() -> int:
    """`LIVE_PAGE_MAX_BYTES`, within `PAGE_MAX_BYTES`: a live tail's pages. Its catch-up
    takes more reads, and a tail blocked on a client that does not read holds less."""
    settings = current_runtime().settings
    return min(settings.live_page_max_bytes, settings.page_max_bytes)
