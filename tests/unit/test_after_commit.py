"""Deferred messages are delivered after a commit and dropped on a rollback."""

import uuid

import pytest
from sqlalchemy import text

from services import after_commit
from services.after_commit import Announce, SendTask, job_key


@pytest.fixture
def delivered(session_factory):
    received = []
    after_commit.install(session_factory, received.extend)
    return received


def test_messages_arrive_only_after_commit(session_factory, delivered):
    with session_factory() as session:
        session.execute(text("SELECT 1"))
        after_commit.defer(session, SendTask("t", "agents", ("1",)))
        assert delivered == []
        session.commit()
    assert delivered == [SendTask("t", "agents", ("1",))]


def test_rollback_drops_messages(session_factory, delivered):
    with session_factory() as session:
        session.execute(text("SELECT 1"))
        after_commit.defer(session, SendTask("t", "agents", ("1",)))
        session.rollback()
        session.execute(text("SELECT 1"))
        session.commit()
    assert delivered == []


def test_dispatcher_sends_together_and_reports_each_failure():
    calls, errors = [], []
    job_id = uuid.uuid4()
    broken = ConnectionError("broker down")

    def publish(tasks, announcements):
        calls.append((list(tasks), list(announcements)))
        return [broken] + [None] * (len(tasks) + len(announcements) - 1)

    dispatch = after_commit.make_dispatcher(
        publish=publish, on_error=lambda message, error: errors.append((message, error))
    )
    dispatch([Announce(job_key(job_id), "running"), SendTask("t", "agents"), Announce("o", "x")])
    # One call for the whole commit: tasks first, then the announcements, in order.
    assert calls == [
        (
            [SendTask("t", "agents")],
            [(after_commit.job_channel(job_id), "running"), ("conveyor:o", "x")],
        )
    ]
    assert errors == [(SendTask("t", "agents"), broken)]


def test_dispatcher_reports_everything_when_the_transport_fails():
    errors = []

    def publish(tasks, announcements):
        raise ConnectionError("redis down")

    dispatch = after_commit.make_dispatcher(
        publish=publish, on_error=lambda message, error: errors.append(message)
    )
    dispatch([SendTask("t", "agents"), Announce("k", "x")])
    assert errors == [SendTask("t", "agents"), Announce("k", "x")]
