"""The event store under real concurrency: committed transactions on separate connections."""

import random
import threading
import time
import uuid

import pytest
from sqlalchemy import select, text

from models import Event
from models.db import make_session_factory
from services import event_batches, event_store
from services.event_store import NewEvent
from tests.conftest import new_user
from tests.helpers import poll

WRITERS = 4
APPENDS_PER_WRITER = 25


@pytest.fixture
def committed(engine):
    """Sessions that really commit, as the API's and workers' do."""
    return make_session_factory(engine)


@pytest.fixture
def owner(committed):
    with committed.begin() as session:
        user = new_user(session)
    return user.id


def run_threads(target, count):
    errors = []

    def guarded(index):
        try:
            target(index)
        except Exception as error:  # surfaced in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def test_concurrent_appenders_get_versions_one_to_n(committed, owner):
    def writer(index):
        for n in range(APPENDS_PER_WRITER):
            with committed.begin() as session:
                event_store.append(
                    session,
                    owner_id=owner,
                    stream="contended",
                    events=[NewEvent("tick", {"writer": index, "n": n})],
                )

    run_threads(writer, WRITERS)
    with committed() as session:
        versions = list(
            session.scalars(
                select(Event.version)
                .where(Event.owner_id == owner, Event.stream == "contended")
                .order_by(Event.version)
            )
        )
        total = WRITERS * APPENDS_PER_WRITER
        assert versions == list(range(1, total + 1))
        assert event_store.stream_version(session, owner_id=owner, stream="contended") == total


def test_expected_version_lets_exactly_one_of_racing_writers_win(committed, owner):
    with committed.begin() as session:
        event_store.append(session, owner_id=owner, stream="race", events=[NewEvent("a", {})])
    outcomes = []

    def writer(index):
        try:
            with committed.begin() as session:
                event_store.append(
                    session,
                    owner_id=owner,
                    stream="race",
                    events=[NewEvent("b", {"writer": index})],
                    expected_version=1,
                )
            outcomes.append("won")
        except event_store.WrongExpectedVersion:
            outcomes.append("conflict")

    run_threads(writer, 6)
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]


@pytest.mark.parametrize("with_ids", [False, True], ids=["one statement", "with event ids"])
def test_racing_creators_of_a_new_stream_let_exactly_one_win(committed, owner, with_ids):
    # Events without ids take the one-statement append, whose upsert creates the stream;
    # with ids, the lock-then-insert path does. Either way one `no_stream` writer wins.
    stream = f"new-{uuid.uuid4().hex[:8]}"
    outcomes = []

    def writer(index):
        ids = [uuid.uuid4(), uuid.uuid4()] if with_ids else [None, None]
        try:
            with committed.begin() as session:
                event_store.append(
                    session,
                    owner_id=owner,
                    stream=stream,
                    events=[NewEvent("b", {"writer": index}, event_id=i) for i in ids],
                    expected_version="no_stream",
                )
            outcomes.append("won")
        except event_store.WrongExpectedVersion as error:
            assert error.extra["current_version"] == 2
            outcomes.append("conflict")

    run_threads(writer, 6)
    assert sorted(outcomes) == ["conflict"] * 5 + ["won"]
    with committed() as session:
        assert event_store.stream_version(session, owner_id=owner, stream=stream) == 2


def test_feed_reader_sees_every_event_exactly_once_under_out_of_order_commits(committed, owner):
    """Writers take their transaction id early and hold their transactions open for random
    short times, so positions become visible out of order. A reader paging by `after` must
    still see every event exactly once."""
    expected = WRITERS * APPENDS_PER_WRITER
    done = threading.Event()
    seen: list[uuid.UUID] = []
    naive_seen: set[uuid.UUID] = set()

    def writer(index):
        rng = random.Random(index)
        for n in range(APPENDS_PER_WRITER):
            with committed.begin() as session:
                session.execute(text("SELECT pg_current_xact_id()"))  # an xid before the position
                time.sleep(rng.uniform(0, 0.004))  # simulated work inside the transaction
                event_store.append(
                    session,
                    owner_id=owner,
                    stream=f"w-{index}",
                    events=[NewEvent("tick", {"writer": index, "n": n})],
                )
                time.sleep(rng.uniform(0, 0.004))

    def reader():
        after = 0
        naive_after = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with committed() as session:
                page = event_store.read_feed(session, owner_id=owner, after=after, limit=50)
                # What a reader trusting positions alone would get: it can skip late commits.
                naive = list(
                    session.scalars(
                        select(Event)
                        .where(Event.owner_id == owner, Event.position > naive_after)
                        .order_by(Event.position)
                        .limit(50)
                    )
                )
            seen.extend(event.event_id for event in page)
            if page:
                after = page[-1].position
            naive_seen.update(event.event_id for event in naive)
            if naive:
                naive_after = naive[-1].position
            if done.is_set() and not page and len(seen) >= expected:
                return

    reading = threading.Thread(target=reader)
    reading.start()
    run_threads(writer, WRITERS)
    done.set()
    reading.join(timeout=90)

    with committed() as session:
        all_ids = set(session.scalars(select(Event.event_id).where(Event.owner_id == owner)))
    assert len(all_ids) == expected
    assert len(seen) == len(set(seen)), "an event was served twice"
    assert set(seen) == all_ids, f"the reader missed {len(all_ids - set(seen))} events"
    print(f"naive position reader missed {len(all_ids - naive_seen)} of {expected} events")


def feed_types(committed, owner):
    with committed() as session:
        return [e.type for e in event_store.read_feed(session, owner_id=owner)]


def test_feed_holds_back_events_of_an_older_open_transaction(committed, owner, engine):
    # Other transactions on the server can delay the feed too, so visibility is polled.
    with committed.begin() as session:
        event_store.append(session, owner_id=owner, stream="a", events=[NewEvent("first", {})])
    poll(lambda: feed_types(committed, owner) == ["first"], timeout=15)
    with engine.connect() as older:
        older.execute(text("SELECT pg_current_xact_id()"))  # an open writing transaction
        with committed.begin() as session:
            event_store.append(session, owner_id=owner, stream="b", events=[NewEvent("later", {})])
        # Committed, but younger than an open writer: held back for as long as it is open.
        assert feed_types(committed, owner) == ["first"]
        older.rollback()
    poll(lambda: feed_types(committed, owner) == ["first", "later"], timeout=15)


# --- one event id, two streams, at once -------------------------------------------------
# Each stream's lock serializes only its own writers: a request for another stream passes
# the replay check before the first commits, and meets its event id on the unique index.


def _inserting_waits_for_a_lock(engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'"
                )
            ).first()
        )


def _append_with_id(session, owner, stream, event_id):
    events = [NewEvent("t", {}, event_id=event_id)]
    event_store.append(session, owner_id=owner, stream=stream, events=events)


def _while_first_holds(committed, engine, owner, event_id, second_writer):
    """Append `event_id` to stream "first" and keep the transaction open until
    `second_writer` (in a thread) waits on it; commit; return what the second raised."""
    raised = []

    def second():
        try:
            second_writer()
        except Exception as error:  # the assertion is the caller's
            raised.append(error)

    with committed.begin() as first:
        _append_with_id(first, owner, "first", event_id)
        thread = threading.Thread(target=second)
        thread.start()
        poll(lambda: _inserting_waits_for_a_lock(engine), timeout=15)
    thread.join(timeout=30)
    assert not thread.is_alive()
    return raised


def test_an_event_id_taken_meanwhile_on_another_stream_is_a_conflict(committed, owner, engine):
    event_id = uuid.uuid4()

    def second_writer():
        with committed.begin() as session:
            _append_with_id(session, owner, "second", event_id)

    raised = _while_first_holds(committed, engine, owner, event_id, second_writer)
    assert [type(e) for e in raised] == [event_store.EventIdTaken]
    assert raised[0].status == 409 and raised[0].extra == {"event_ids": [str(event_id)]}
    with committed() as session:
        assert event_store.stream_version(session, owner_id=owner, stream="second") == 0
        assert event_store.stream_version(session, owner_id=owner, stream="first") == 1


def test_a_batch_whose_event_id_was_taken_meanwhile_is_rejected(committed, owner, engine):
    event_id = uuid.uuid4()
    with committed.begin() as session:
        batch_id = event_batches.accept(
            session,
            owner_id=owner,
            events=[
                ("second", NewEvent("t", {})),
                ("second", NewEvent("t", {}, event_id=event_id)),
            ],
        ).id
    status = []

    def second_writer():
        status.append(event_batches.persist_in_transaction(committed, batch_id))

    assert _while_first_holds(committed, engine, owner, event_id, second_writer) == []
    assert status == ["rejected"]
    with committed() as session:
        batch = event_batches.get(session, owner_id=owner, batch_id=batch_id)
        assert [r["status"] for r in batch.results] == ["not_persisted", "rejected"]
        assert "appended to stream 'first'" in batch.results[1]["reason"]
        assert event_store.stream_version(session, owner_id=owner, stream="second") == 0
