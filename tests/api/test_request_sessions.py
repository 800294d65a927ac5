"""The request's unit of work as the web process builds it (not a test's shared connection):
one-statement requests run in autocommit on the same pool, without an ORM session, and
leave the pool transactional."""

import contextlib
import time

import pytest
import redis

from api import create_app
from api.request_context import db, end_session, single_statement_db
from models.db import OneStatement
from settings import Settings
from tests.conftest import FAST_PASSWORDS
from tests.helpers import terminate_backend


@pytest.fixture
def one_connection_app(settings: Settings):  # type: ignore[no-untyped-def]
    # One pooled connection, so each request below gets the one before it had.
    app = create_app(
        settings.model_copy(update={"database_pool_size": 1, "database_max_overflow": 0}),
        passwords=FAST_PASSWORDS,
    )
    yield app
    with contextlib.suppress(redis.RedisError):
        app.extensions["conveyor"].notifier.close()
    app.extensions["conveyor"].engine.dispose()


def _driver_connection(unit):  # type: ignore[no-untyped-def]
    if isinstance(unit, OneStatement):
        return OneStatement.driver_of(unit.pooled())
    return unit.connection().connection.driver_connection


def test_a_single_statement_request_commits_each_statement_by_itself(one_connection_app):
    with one_connection_app.test_request_context():
        connection = _driver_connection(single_statement_db())
        assert connection.autocommit is True
        end_session()


def test_the_connection_is_transactional_again_for_the_next_request(one_connection_app):
    with one_connection_app.test_request_context():
        first = _driver_connection(single_statement_db())
        end_session()
    with one_connection_app.test_request_context():
        second = _driver_connection(db())
        assert second is first  # the pool's one connection, given back and taken again
        assert second.autocommit is False
        end_session()


def test_a_request_cannot_mix_autocommit_and_a_transaction(one_connection_app):
    with one_connection_app.test_request_context():
        single_statement_db()
        with pytest.raises(RuntimeError, match="single_statement_db"):
            db()
        end_session()


def test_a_request_that_opened_a_transaction_keeps_it(one_connection_app):
    with one_connection_app.test_request_context():
        session = db()
        assert single_statement_db() is session
        assert _driver_connection(session).autocommit is False
        end_session()


def test_a_statement_on_a_dead_connection_fails_as_sqlalchemys_and_the_pool_heals(
    one_connection_app, database_url
):
    """The hot statements skip SQLAlchemy's execution layer (models.db.fetch_one_on_driver);
    a connection the server dropped must still raise SQLAlchemy's OperationalError (a 503)
    and leave the pool, so the next request gets a new one."""
    import uuid

    import sqlalchemy.exc

    from services import jobs
    from services.errors import NotFound

    def view() -> None:
        jobs.view(single_statement_db(), owner_id=uuid.uuid4(), job_id=uuid.uuid4())

    with one_connection_app.test_request_context():
        with pytest.raises(NotFound):
            view()
        backend = _driver_connection(single_statement_db()).info.backend_pid
        end_session()
    terminate_backend(database_url, backend)
    with one_connection_app.test_request_context(), pytest.raises(sqlalchemy.exc.OperationalError):
        view()
    with one_connection_app.test_request_context():
        with pytest.raises(NotFound):
            view()  # on a new connection
        assert _driver_connection(single_statement_db()).info.backend_pid != backend


def test_a_statement_reuses_its_connections_cursor_across_requests(one_connection_app):
    """The hot statements run on one cursor per statement per connection (models.db), not
    on a new one per call; each request takes its rows before the next run reuses it."""
    import uuid

    from services import jobs
    from services.errors import NotFound

    cursors = []
    for _ in range(2):
        with one_connection_app.test_request_context():
            unit = single_statement_db()
            with pytest.raises(NotFound):
                jobs.view(unit, owner_id=uuid.uuid4(), job_id=uuid.uuid4())
            assert isinstance(unit, OneStatement)
            (cursor,) = unit.pooled().info["conveyor.cursors"].values()
            cursors.append(cursor)
            end_session()
    assert cursors[0] is cursors[1]


def test_work_a_single_statement_deferred_is_sent_after_its_commit_and_never_after_rollback(
    one_connection_app, redis_url
):
    from services import metrics
    from services.after_commit import Announce, channel, defer

    counted: list[str] = []
    previous = metrics.install(lambda spec, amount, labels: counted.append(spec.name))
    listener = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel("rolled-back"), channel("committed"))
    try:
        with one_connection_app.test_request_context():
            unit = single_statement_db()
            assert isinstance(unit, OneStatement)  # the web process's own, not a session
            defer(unit, Announce("rolled-back"))
            metrics.count_after_commit(unit, metrics.JOBS_SUBMITTED)
            unit.rollback()
        with one_connection_app.test_request_context():
            unit = single_statement_db()
            defer(unit, Announce("committed"))
            metrics.count_after_commit(unit, metrics.EVENTS_APPENDED)
            assert counted == []  # nothing before the commit
            end_session()
        assert counted == [metrics.EVENTS_APPENDED.name]
        # One publishing thread sends in order: had the rolled-back announcement been sent,
        # it would arrive first.
        deadline = time.monotonic() + 10
        message = None
        while message is None:
            assert time.monotonic() < deadline, "the committed announcement never came"
            message = listener.get_message(timeout=0.1)
        assert message["channel"] == channel("committed").encode()
    finally:
        metrics.install(previous)
        listener.close()
