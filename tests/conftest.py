"""Test infrastructure: real PostgreSQL and Redis, a migrated database per xdist worker,
and a transaction rolled back after every test.

Servers come from DATABASE_URL / REDIS_URL (default: the local ones). When they do not
answer, the embedded default is started, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

import cli
from api import create_app
from models import User
from models.db import make_engine
from services import users
from services.passwords import Passwords
from settings import Settings
from tests.helpers import ROOT, AuthClient
from tests.ports import free_port

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_JWT_SECRET = "test-secret-" + "x" * 40
FAST_PASSWORDS = Passwords(time_cost=1, memory_kib=1024)


def new_user(session: Session) -> User:
    """A registered user with a unique address, for tests below the API."""
    email = f"{uuid.uuid4().hex}@example.com"
    return users.register(session, email=email, password="p" * 12, passwords=FAST_PASSWORDS)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    return cli.tcp_reachable(parts.hostname or "127.0.0.1", parts.port or default_port)


@dataclass(frozen=True)
class Servers:
    admin_database_url: str  # a psycopg (libpq) URL to a database we may CREATE DATABASE from
    redis_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    stops = []
    if not _reachable(database_url, 5432):
        if _in_ci():
            pytest.fail(f"PostgreSQL at {_safe(database_url)} is unreachable (CI=true)", False)
        database_url, stop = cli.start_embedded_postgres(database="postgres")
        stops.append(stop)
    if not _reachable(redis_url, 6379):
        if _in_ci():
            pytest.fail(f"Redis at {_safe(redis_url)} is unreachable (CI=true)", False)
        redis_url, stop = cli.start_embedded_redis(port=free_port())
        stops.append(stop)
    yield Servers(_libpq(database_url), redis_url)
    for stop in reversed(stops):
        stop()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _worker_index(worker_id: str) -> int:
    return 0 if worker_id == "master" else int(worker_id.removeprefix("gw"))


def create_migrated_database(admin_url: str, name: str) -> str:
    """Drop and create database `name`, migrate it to head; return its SQLAlchemy URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    url_text = url.render_as_string(hide_password=False)
    engine = create_engine(url_text, poolclass=pool.NullPool)
    with engine.begin() as connection:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    engine.dispose()
    return url_text


def alembic_config() -> Config:
    return Config(str(ROOT / "alembic.ini"))


@pytest.fixture(scope="session")
def database_url(servers: Servers, worker_id: str) -> Iterator[str]:
    # Unique per run, so two suites on one server (a developer's and a helper's) never
    # drop each other's database.
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:8]
    name = f"conveyor_test_{worker_id}_{run_id}"
    yield create_migrated_database(servers.admin_database_url, name)
    drop_database(servers.admin_database_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def redis_url(servers: Servers, worker_id: str) -> str:
    # One logical Redis database per xdist worker keeps queues and keys apart.
    number = 1 + _worker_index(worker_id) % 15
    url = make_url(servers.redis_url.replace("redis://", "postgresql://", 1))
    base = f"redis://{url.host or '127.0.0.1'}:{url.port or 6379}/{number}"
    client = redis.Redis.from_url(base)
    client.flushdb()
    client.close()
    return base


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    # The app's and the workers' engine (JSON written and read by orjson), not SQLAlchemy's
    # default: that one read jsonb with the json module, which gives a number like 1e300,
    # stored by PostgreSQL as 301 digits, as an integer orjson cannot write (a 500 that only
    # the tests had), where orjson reads it back as the float it was.
    engine = make_engine(database_url, pool_size=5, max_overflow=10)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        conveyor_env="test",
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret_key=TEST_JWT_SECRET,
        log_level="WARNING",
        # Every test client is 127.0.0.1 and a worker's tests share one Redis: limits stay on
        # but out of the way; tests/security sets its own low ones.
        rate_limit_default="100000/minute",
        rate_limit_auth_per_ip="100000/minute",
        rate_limit_auth_per_email="1000/minute",
    )


@pytest.fixture
def session_factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions that share one connection whose outer transaction is rolled back at the end;
    their commits only release savepoints."""
    connection = engine.connect()
    transaction = connection.begin()
    factory = sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    yield factory
    transaction.rollback()
    connection.close()


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    app = create_app(settings, session_factory=session_factory, passwords=FAST_PASSWORDS)
    yield app
    app.extensions["conveyor"].notifier.close()


@pytest.fixture
def app_with(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Any]:
    """Makes apps with settings changed (`app_with(job_max_timeout_s=60)`), on the test's
    database transaction."""
    apps = []

    def make(**changes: Any) -> Any:
        app = create_app(
            settings.model_copy(update=changes),
            session_factory=session_factory,
            passwords=FAST_PASSWORDS,
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        with contextlib.suppress(redis.RedisError):  # it says goodbye over Redis
            app.extensions["conveyor"].notifier.close()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def alice(client) -> AuthClient:  # type: ignore[no-untyped-def]
    return AuthClient.register(client, f"alice-{uuid.uuid4().hex[:8]}@example.com")


@pytest.fixture
def bob(client) -> AuthClient:  # type: ignore[no-untyped-def]
    return AuthClient.register(client, f"bob-{uuid.uuid4().hex[:8]}@example.com")


# The fault tests' measurements, gathered in the terminal summary (tests/faults/summary.py).
from tests.faults.summary import pytest_terminal_summary  # noqa: E402, F401
