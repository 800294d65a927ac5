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


def test_dispatcher_reports_failures_and_continues():
    sent, errors = [], []

    def broken_send(task):
        raise ConnectionError("broker down")

    dispatch = after_commit.make_dispatcher(
        send_task=broken_send,
        announce=sent.extend,
        on_error=lambda message, error: errors.append((message, type(error))),
    )
    job_id = uuid.uuid4()
    dispatch(
        [SendTask("t", "agents"), Announce(job_key(job_id), "running"), Announce("other", "x")]
    )
    assert errors == [(SendTask("t", "agents"), ConnectionError)]
    # Both announcements went out together.
    assert sent == [(after_commit.job_channel(job_id), "running"), ("conveyor:other", "x")]
