"""A job's transactions on the worker's engine, which does not ping connections before use:
after the database dropped the pooled connection, the job still runs, on a new one."""

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from models.db import make_engine, make_session_factory
from services import agents, job_execution, jobs, users
from services.job_policy import JobPolicy
from tests.conftest import FAST_PASSWORDS
from tests.helpers import terminate_backend

POLICY = JobPolicy()


@pytest.fixture
def one_connection(database_url):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    yield make_session_factory(engine)
    engine.dispose()


def _queued_job(factory) -> uuid.UUID:  # type: ignore[no-untyped-def]
    with factory.begin() as session:
        owner = users.register(
            session, email=f"{uuid.uuid4().hex}@example.com", password="p" * 12,
            passwords=FAST_PASSWORDS,
        ).id  # fmt: skip
        agent = agents.create(
            session,
            owner_id=owner,
            fields={"name": "echo", "provider": "echo", "model": "echo"},
        )
        return jobs.submit(
            session, owner_id=owner, agent_id=agent.id, input={"text": "hi"}, policy=POLICY
        ).id


def _drop_pooled_connection(factory, database_url) -> None:  # type: ignore[no-untyped-def]
    with factory() as session:
        backend = session.connection().connection.driver_connection.info.backend_pid
    terminate_backend(database_url, backend)


def test_a_job_runs_after_its_pooled_connection_was_dropped(one_connection, database_url):
    job_id = _queued_job(one_connection)
    _drop_pooled_connection(one_connection, database_url)
    assert job_execution.execute(one_connection, job_id, policy=POLICY) == "succeeded"


def test_only_a_dead_connection_is_tried_again_and_only_once(one_connection):
    calls: list[int] = []

    def divides_by_zero(session):  # type: ignore[no-untyped-def]
        calls.append(1)
        return session.execute(text("SELECT 1/0"))

    with pytest.raises(DBAPIError, match="division by zero"):
        job_execution.in_transaction(one_connection, divides_by_zero)
    assert len(calls) == 1  # not a lost connection: not tried again

    def loses_its_connection(session):  # type: ignore[no-untyped-def]
        calls.append(1)
        return session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    calls.clear()
    with pytest.raises(OperationalError):
        job_execution.in_transaction(one_connection, loses_its_connection)
    assert len(calls) == 2  # once more on a new connection, then the error stands
