"""Composition root of the web process: `gunicorn "api:create_app()"`."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy.orm import Session, sessionmaker

from api import (
    admission,
    auth,
    cors,
    json_limits,
    metrics,
    problems,
    rate_limits,
    request_context,
)
from api.app_class import ConveyorApp
from api.json_provider import OrjsonProvider
from api.notifier import Notifier
from api.openapi import describe
from api.queue_depth import QueueDepth
from api.revocation_store import RevocationStore
from api.routes import agents, api_keys, documents, events, health, jobs, streams, webhooks
from api.routes import auth as auth_routes
from api.runtime import Runtime
from models.db import UnitOfWork, make_engine, make_session_factory
from services.job_events import AGENTS_QUEUE
from services.log_config import configure_logging
from services.passwords import Passwords
from settings import Settings, load_settings
from workers.celery_app import install_after_commit, make_celery
from workers.redis_clients import make_redis

log = structlog.get_logger("conveyor.api")


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: sessionmaker[Session] | None = None,
    passwords: Passwords | None = None,
) -> ConveyorApp:
    """Build the web app. Tests pass their own settings and a session factory bound to a
    connection whose transaction they roll back."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)

    app = ConveyorApp(
        "conveyor", title="Conveyor", version="1.0.0", docs_path="/docs", spec_path="/openapi.json"
    )
    app.json = OrjsonProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        OPENAPI_VERSION="3.1.0",
        VALIDATION_ERROR_STATUS_CODE=422,
        SYNC_LOCAL_SPEC=False,
        JSON_SORT_KEYS=False,
    )
    app.url_map.strict_slashes = False

    engine = make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        statement_timeout_ms=settings.web_statement_timeout_ms,
    )
    redis_client = make_redis(settings.redis_url, timeout_s=5)
    redis_probe = make_redis(settings.redis_url, timeout_s=1)
    gate_client = rate_limits.gate_client(settings)
    producer = make_celery(broker_url=settings.redis_url)
    tests_factory = session_factory
    session_factory = tests_factory or make_session_factory(engine)
    after_commit = install_after_commit(
        [session_factory],
        producer,
        redis_client,
        fault_injection=settings.fault_injection,
        in_background=True,
    )
    assert after_commit.background is not None
    single_statement: Callable[[], UnitOfWork] = (
        # A test's factory: every statement stays inside the transaction the test rolls back.
        tests_factory or after_commit.single_statement(engine)
    )
    revocations = RevocationStore(
        redis_client, session_factory, family_ttl_s=settings.jwt_refresh_ttl_s
    )
    app.extensions["conveyor"] = Runtime(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        single_statement=single_statement,
        publisher=after_commit.background,
        redis=redis_client,
        redis_probe=redis_probe,
        passwords=passwords or Passwords(),
        job_policy=settings.job_policy(),
        webhook_policy=settings.webhook_policy(),
        # The probe's quick client: a submit must not hang on a Redis that does not answer.
        queue_depth=QueueDepth(redis_probe, AGENTS_QUEUE),
        notifier=Notifier(redis_client, slots=settings.max_waiting_requests),
        gate=rate_limits.make_gate(settings, gate_client, revocations),
        revocations=revocations,
    )

    request_context.install(app)
    metrics.install(app)  # after request_context: reads the start time it sets
    problems.install(app)
    # Before anything that costs: a request turned away under overload costs next to nothing.
    admission.install(
        app,
        slots=settings.admission_slots,
        max_wait_s=settings.admission_max_wait_ms / 1000,
        behind_wait_s=settings.admission_behind_wait_ms / 1000,
        behind_queue=settings.admission_behind_queue,
    )
    json_limits.install(app, settings.json_limits())
    cors.install(app, settings.cors_origins)  # preflights answer before auth and limits
    auth.install(
        app,
        secret=settings.jwt_secret_key,
        access_ttl_s=settings.jwt_access_ttl_s,
        refresh_ttl_s=settings.jwt_refresh_ttl_s,
        refresh_reuse_grace_s=settings.refresh_reuse_grace_s,
        client=redis_client,
    )
    rate_limits.install(app, settings, gate_client)  # after auth: counts per the user it found
    for blueprint in (
        health.bp,
        auth_routes.bp,
        api_keys.bp,
        agents.bp,
        jobs.bp,
        events.bp,
        streams.bp,
        documents.bp,
        webhooks.bp,
        webhooks.deliveries_bp,
    ):
        app.register_blueprint(blueprint)
    request_context.note_routes(app)  # which routes take no body: every route is known now
    app.spec_processor(lambda spec: describe(spec, app))
    return app
