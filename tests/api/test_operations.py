"""GET /metrics and GET /readyz through the test client, on real PostgreSQL and Redis.

Counters are process-wide and other tests in this process move them too, so each test
compares two scrapes around what it does.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from alembic import command
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

from api import create_app
from api.routes.health import script_revisions
from settings import Settings
from tests import prom
from tests.conftest import FAST_PASSWORDS, Servers, alembic_config, drop_database
from workers.celery_app import QUEUES


def scrape(client) -> prom.Samples:  # type: ignore[no-untyped-def]
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return prom.parse(response.get_data(as_text=True))


def requests_of(samples: prom.Samples, route: str, status: str, method: str = "GET") -> float:
    labels = {"method": method, "route": route, "status": status}
    return prom.value(samples, "conveyor_http_requests_total", **labels)


def test_metrics_count_requests_by_url_rule_and_status(client, alice):
    before = scrape(client)
    ids = [uuid.uuid4() for _ in range(3)]
    for job_id in ids:  # three different paths, one route
        assert alice.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/healthz").status_code == 200
    after = scrape(client)

    route = "/v1/jobs/<uuid:job_id>"
    assert requests_of(after, route, "404") - requests_of(before, route, "404") == 3
    assert requests_of(after, "unmatched", "404") - requests_of(before, "unmatched", "404") == 1
    assert requests_of(after, "/healthz", "200") - requests_of(before, "/healthz", "200") == 1
    # No series is labelled with a raw path.
    assert not any(str(job_id) in str(key) for key in after for job_id in ids)
    histogram = "conveyor_http_request_duration_seconds_count"
    labels = {"method": "GET", "route": route, "status": "404"}
    assert prom.value(after, histogram, **labels) - prom.value(before, histogram, **labels) == 3
    buckets = [
        v
        for (name, lbls), v in after.items()
        if name.endswith("_bucket") and ("route", route) in lbls
    ]
    assert buckets, "the latency histogram has buckets per route"


def test_metrics_count_submitted_finished_and_appended_after_commit(client, alice):
    agent = alice.create_agent(params={"delay_ms": 1})
    before = scrape(client)
    first = alice.submit(agent["id"])
    alice.submit(agent["id"])
    assert alice.post(f"/v1/jobs/{first['id']}/cancel").status_code == 200
    # A rejected submit commits nothing, so it counts nothing.
    bad = {"agent_id": str(uuid.uuid4()), "input": {"text": "x"}}
    assert alice.post("/v1/jobs", json=bad).status_code == 422
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return prom.value(after, name, **labels) - prom.value(before, name, **labels)

    assert delta("conveyor_jobs_submitted_total") == 2
    assert delta("conveyor_jobs_finished_total", status="cancelled") == 1
    assert delta("conveyor_jobs_finished_total", status="succeeded") == 0
    # job.queued twice, job.cancelled once.
    assert delta("conveyor_events_appended_total") == 3
    for status in ("succeeded", "failed", "cancelled", "timed_out"):
        assert ("conveyor_jobs_finished_total", frozenset({("status", status)})) in after


def test_metrics_read_queue_depths_from_redis_at_scrape_time(client, alice, redis_url):
    broker = redis.Redis.from_url(redis_url)
    try:
        broker.delete(*QUEUES)
        broker.rpush("webhooks", json.dumps({"fake": 1}), json.dumps({"fake": 2}))
        agent = alice.create_agent()
        alice.submit(agent["id"])
        assert client.application.extensions["conveyor"].publisher.flush()
        samples = scrape(client)
        depths = {q: prom.value(samples, "conveyor_queue_depth", queue=q) for q in QUEUES}
        assert depths == {"agents": 1, "events": 0, "webhooks": 2, "maintenance": 0}
        assert {q: broker.llen(q) for q in QUEUES} == depths
    finally:
        broker.delete(*QUEUES)
        broker.close()


def test_metrics_answer_without_the_queue_depths_when_redis_is_away(
    settings: Settings, session_factory
):
    unreachable = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(unreachable, session_factory=session_factory, passwords=FAST_PASSWORDS)
    try:
        samples = scrape(app.test_client())
    finally:
        with contextlib.suppress(redis.RedisError):  # it says goodbye over Redis
            app.extensions["conveyor"].notifier.close()
    assert "conveyor_queue_depth" not in prom.names(samples)
    assert "conveyor_http_requests_total" in prom.names(samples)


# --------------------------------------------------------------------------- readiness


def test_readyz_reports_every_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["checks"] == {"postgresql": "ok", "redis": "ok", "migrations": "ok"}


@pytest.fixture
def bare_database(servers: Servers, worker_id: str) -> Iterator[str]:
    """An empty database of this test's own; its SQLAlchemy URL."""
    name = f"conveyor_readyz_{worker_id}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.admin_database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(servers.admin_database_url).set(drivername="postgresql+psycopg", database=name)
    yield url.render_as_string(hide_password=False)
    drop_database(servers.admin_database_url, name)


def test_readyz_is_503_until_the_schema_reaches_head(settings: Settings, bare_database: str):
    app = create_app(
        settings.model_copy(update={"database_url": bare_database}), passwords=FAST_PASSWORDS
    )
    client = app.test_client()
    engine = create_engine(bare_database, poolclass=pool.NullPool)
    heads, known = script_revisions()
    oldest = ScriptDirectory.from_config(alembic_config()).get_base()
    assert oldest in known

    def migrate(revision: str) -> None:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def readiness() -> tuple[int, str]:
        response = client.get("/readyz")
        return response.status_code, response.json["checks"]["migrations"]

    try:
        assert readiness() == (503, "behind: the database is not migrated")
        migrate(oldest)
        status, detail = readiness()
        assert status == 503 and detail.startswith(f"behind: database at {oldest}"), detail
        assert client.get("/readyz").json["detail"] == "not ready: migrations"
        migrate("head")
        assert readiness() == (200, "ok")
        # A revision this release does not know is a newer release's: still ready.
        with engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_future'")
        assert readiness() == (200, "ok")
    finally:
        app.extensions["conveyor"].notifier.close()
        app.extensions["conveyor"].engine.dispose()
        engine.dispose()
    assert len(heads) == 1, "one migration head"
