"""The request's unit of work as the web process builds it (not a test's shared connection):
one-statement requests run in autocommit on the same pool, and leave it transactional."""

import contextlib

import pytest
import redis

from api import create_app
from api.request_context import db, end_session, single_statement_db
from settings import Settings
from tests.conftest import FAST_PASSWORDS


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


def _driver_connection(session):  # type: ignore[no-untyped-def]
    return session.connection().connection.driver_connection


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
