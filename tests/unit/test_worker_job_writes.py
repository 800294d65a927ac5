"""A job's writes as a worker makes them, on the worker's own engine (no ping before use)
and units of work: the claim and most ends are one statement in autocommit
(models.db.OneStatement); an end with someone to tell is a transaction of a session."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from models.db import make_engine, make_session_factory
from services import job_execution, job_transitions, job_units, jobs
from services.after_commit import Announce, SendTask
from services.job_transitions import Claim
from tests.helpers import poll, terminate_backend, waiting_for_locks
from tests.job_worker import POLICY, Worker


@pytest.fixture
def worker(database_url: str) -> Iterator[Worker]:
    worker = Worker(database_url, pool_size=2)
    yield worker
    worker.engine.dispose()


def test_an_echo_job_runs_in_two_statements_with_its_events_and_announcements(worker):
    job_id = worker.queued_job()
    assert worker.run(job_id) == "succeeded"
    assert worker.job(job_id) == ("succeeded", 1, {"text": "hi"}, None)
    started, ended = worker.events(job_id)[1:]
    assert started == (2, "job.started", {"job_id": str(job_id), "attempt": 1}, {})
    assert ended == (
        3, "job.succeeded", {"job_id": str(job_id), "attempt": 1, "output": {"text": "hi"}}, {},
    )  # fmt: skip
    # The claim's announcements wait for the end's: one dispatch, one round trip to Redis.
    [messages] = worker.dispatches
    assert [(m.key, m.payload) for m in messages if m.key == f"job:{job_id}"] == [
        (f"job:{job_id}", "running"), (f"job:{job_id}", "succeeded"),
    ]  # fmt: skip
    assert not [m for m in messages if isinstance(m, SendTask)]  # nobody to tell


def test_a_retry_after_a_transient_failure_carries_the_claims_announcements(worker):
    job_id = worker.queued_job(params={"transient_failures": 1})
    assert worker.run(job_id) == "queued"
    [messages] = worker.dispatches  # the claim's, then the retry's, in one dispatch
    announced = [
        m.payload for m in messages if isinstance(m, Announce) and m.key == f"job:{job_id}"
    ]
    assert announced == ["running", "queued"]
    assert [m.name for m in messages if isinstance(m, SendTask)] == ["conveyor.jobs.run"]


def test_the_request_id_of_the_submit_follows_into_the_workers_events(worker):
    job_id = worker.queued_job(correlation_id="trace-7")
    assert worker.run(job_id) == "succeeded"
    assert [meta for *_, meta in worker.events(job_id)] == [{"correlation_id": "trace-7"}] * 3


def test_a_job_with_a_webhook_url_ends_with_its_delivery_written(worker):
    job_id = worker.queued_job(webhook_url="https://example.com/hook")
    assert worker.run(job_id) == "succeeded"
    sent = [m for m in worker.dispatched if isinstance(m, SendTask)]
    assert [m.name for m in sent] == ["conveyor.webhooks.deliver"]
    with worker.engine.connect() as connection:
        delivered = connection.execute(
            text("SELECT count(*) FROM webhook_deliveries WHERE job_id = :id"), {"id": job_id}
        ).scalar()
    assert delivered == 1
    assert [kind for _, kind, *_ in worker.events(job_id)][-1] == "job.succeeded"


def test_an_end_after_the_job_was_taken_over_changes_nothing(worker):
    job_id = worker.queued_job()

    def taken_over_meanwhile(_config, _input, *, control):  # type: ignore[no-untyped-def]
        with worker.engine.begin() as connection:  # the sweeper ended it meanwhile
            connection.execute(
                text("UPDATE jobs SET status = 'timed_out' WHERE id = :id"), {"id": job_id}
            )
        return {"text": "late"}

    ended = job_execution.execute(
        worker.sessions, job_id, policy=POLICY, runner=taken_over_meanwhile,
        single_statement=worker.one_statement,
    )  # fmt: skip
    assert ended is None
    assert worker.job(job_id).status == "timed_out"
    assert [kind for _, kind, *_ in worker.events(job_id)] == ["job.queued", "job.started"]
    # What the claim held back was still sent, though no end carried it.
    assert Announce(f"job:{job_id}", "running") in worker.dispatched


# --- a writer that commits while the one-statement write waits for the job's row ----------


def _while_another_writer_holds_the_row(
    worker: Worker, job_id: uuid.UUID, write: Callable[[], Any]
) -> Any:
    """Run `write` while another transaction, holding the job's row, appends an event to its
    stream; that transaction commits once `write` waits for the row. The version `write`
    read in its statement's snapshot is then taken."""

    def hold(other: Session) -> None:
        other.execute(text("UPDATE jobs SET updated_at = now() WHERE id = :id"), {"id": job_id})
        other.execute(
            text(
                "INSERT INTO events (event_id, owner_id, stream, version, type, data, metadata) "
                "SELECT gen_random_uuid(), owner_id, CAST(:stream AS varchar), "
                "(SELECT max(version) + 1 FROM events WHERE stream = CAST(:stream AS varchar)), "
                "'job.note', '{}', '{}' FROM jobs WHERE id = :id"
            ),
            {"id": job_id, "stream": f"job-{job_id}"},
        )

    return _while_held(worker, hold, write)


def _while_held(worker: Worker, hold: Callable[[Session], Any], write: Callable[[], Any]) -> Any:
    """Run `write` while another transaction, which did `hold`, holds the job's row; that
    transaction commits once `write` waits for the row."""
    results: list[Any] = []
    outside = create_engine(worker.engine.url, poolclass=NullPool)  # not the worker's pool
    with Session(outside) as other:
        hold(other)
        thread = threading.Thread(target=lambda: results.append(write()))
        thread.start()
        poll(lambda: waiting_for_locks(outside))
        other.commit()
        thread.join(timeout=10)
    assert results, "the write failed"
    return results[0]


def test_a_claim_that_lost_its_events_version_to_a_concurrent_writer_is_made_again(worker):
    job_id = worker.queued_job()
    claim = _while_another_writer_holds_the_row(
        worker,
        job_id,
        lambda: worker.claim(job_id),
    )
    assert isinstance(claim, Claim) and claim.attempt == 1
    assert [(v, kind) for v, kind, *_ in worker.events(job_id)] == [
        (1, "job.queued"), (2, "job.note"), (3, "job.started"),
    ]  # fmt: skip


def test_an_end_that_lost_its_events_version_to_a_concurrent_writer_is_made_again(worker):
    job_id = worker.queued_job()
    claim = worker.claim(job_id)
    assert claim is not None
    ended = _while_another_writer_holds_the_row(
        worker,
        job_id,
        lambda: job_units.in_transaction(
            worker.one_statement,
            lambda unit: job_transitions.finish_untold(unit, claim, "succeeded", output={}),
        ),
    )
    assert ended is True
    assert [kind for _, kind, *_ in worker.events(job_id)][-2:] == ["job.note", "job.succeeded"]


# --- a cancel and a re-queue that meet at the job's row ----------------------------------


def _retry_later(session: Session, claim: Claim) -> str | None:
    error = {"type": "transient", "message": "the provider answered 503"}
    return job_transitions.retry_later(session, claim, error=error, delay_s=60, policy=POLICY)


def test_a_cancel_that_a_failing_attempt_waited_for_ends_the_job_cancelled(worker):
    """It was queued again: the retry's UPDATE, waiting for the row, went on once the cancel
    committed."""
    job_id = worker.queued_job()
    claim = worker.claim(job_id)
    assert claim is not None
    ended = _while_held(
        worker,
        lambda holder: jobs.cancel(holder, owner_id=claim.owner_id, job_id=job_id),
        lambda: job_units.in_transaction(worker.sessions, lambda s: _retry_later(s, claim)),
    )
    assert ended == "cancelled"
    assert worker.job(job_id).status == "cancelled"
    assert [kind for _, kind, *_ in worker.events(job_id)][-2:] == [
        "job.cancel_requested", "job.cancelled",
    ]  # fmt: skip


def test_a_cancel_that_waited_for_a_failing_attempt_ends_the_queued_job(worker):
    """The cancel's request matched no running job once the retry committed, and it answered
    200 with the job queued, to run again."""
    job_id = worker.queued_job()
    claim = worker.claim(job_id)
    assert claim is not None

    def cancel() -> str:
        with worker.sessions.begin() as session:
            return jobs.cancel(session, owner_id=claim.owner_id, job_id=job_id).status

    answered = _while_held(worker, lambda holder: _retry_later(holder, claim), cancel)
    assert answered == "cancelled"
    assert worker.job(job_id).status == "cancelled"
    assert [kind for _, kind, *_ in worker.events(job_id)][-2:] == [
        "job.retry_scheduled", "job.cancelled",
    ]  # fmt: skip


# --- after the database dropped the pooled connections ---------------------------------


def _drop_pooled_connections(worker: Worker, database_url: str, count: int) -> None:
    """Open `count` pooled connections at once (so the pool keeps them all), then have the
    server drop each, as a restart would."""
    sessions = [worker.sessions() for _ in range(count)]
    backends = [s.connection().connection.driver_connection.info.backend_pid for s in sessions]
    for session in sessions:
        session.close()
    for backend in backends:
        terminate_backend(database_url, backend)


def test_a_job_runs_after_its_pooled_connections_were_dropped(worker, database_url):
    job_id = worker.queued_job()
    # Both are dead: the second try of the claim must not take the other one.
    _drop_pooled_connections(worker, database_url, 2)
    assert worker.run(job_id) == "succeeded"


def test_only_a_dead_connection_is_tried_again_and_only_once(database_url):
    one_connection = make_session_factory(make_engine(database_url, pool_size=1, max_overflow=0))
    calls: list[int] = []

    def divides_by_zero(session):  # type: ignore[no-untyped-def]
        calls.append(1)
        return session.execute(text("SELECT 1/0"))

    with pytest.raises(DBAPIError, match="division by zero"):
        job_units.in_transaction(one_connection, divides_by_zero)
    assert len(calls) == 1  # not a lost connection: not tried again

    def loses_its_connection(session):  # type: ignore[no-untyped-def]
        calls.append(1)
        return session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    calls.clear()
    with pytest.raises(OperationalError):
        job_units.in_transaction(one_connection, loses_its_connection)
    assert len(calls) == 2  # once more on a new connection, then the error stands
