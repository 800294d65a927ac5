"""The event store under real concurrency: committed transactions on separate connections."""

import random
import threading
import time
import uuid

import pytest
from sqlalchemy import select, text

from models import Event, EventBatch
from models.db import make_session_factory
from services import event_batches, event_store
from services.event_store import NewEvent
from tests.conftest import new_user
from tests.helpers import poll, run_together

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
                page = feed(session, owner, after=after, limit=50)
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


def feed(session, owner, *, after=0, limit=100):
    """A page of the owner's feed, as the API reads it (no bound by bytes that matters)."""
    page, _ = event_store.feed_page(
        session, owner_id=owner, after=after, types=(), limit=limit, max_bytes=1 << 30
    )
    return page


def feed_types(committed, owner):
    with committed() as session:
        return [e.type for e in feed(session, owner)]


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


def _inserts_waiting_for_a_lock(engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO events%'"
            )
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
        poll(lambda: _inserts_waiting_for_a_lock(engine), timeout=15)
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


# --- the same event ids in other orders, at once ----------------------------------------
# Requests that share ids meet on the unique index. Inserted in each request's own order,
# each could hold an id the other waits for: PostgreSQL broke the deadlock after a second
# by failing one of them (a 503 for an append, a batch left pending), not with the 409 the
# unique index gives. Inserted in the ids' order, the first to take the smallest shared id
# wins and the others wait there, then meet it.


def _events(ids):
    return [NewEvent("t", {"n": n}, event_id=event_id) for n, event_id in enumerate(ids)]


def _crossing(committed, engine, owner, write):
    """Run `write(i, ids)` for i = 0 and 1 at once: ids `a, x0, b` and `b, x1, a`, where
    open transactions hold `x0` and `x1` until both writers wait for a lock. Each writer
    has then taken its first id in its own order and, let go, would wait for the other's.
    Returns what each call returned or raised, and the two shared ids."""
    a, b = uuid.uuid4(), uuid.uuid4()
    held = [uuid.uuid4(), uuid.uuid4()]
    orders = [[a, held[0], b], [b, held[1], a]]
    holders = [committed() for _ in held]
    outcomes: list[object] = []
    racing = threading.Thread(
        target=lambda: outcomes.extend(run_together(2, lambda i: write(i, orders[i])))
    )
    try:
        for number, (holder, event_id) in enumerate(zip(holders, held, strict=True)):
            holder.begin()
            _append_with_id(holder, owner, f"holder-{number}", event_id)
        racing.start()
        poll(lambda: _inserts_waiting_for_a_lock(engine) >= 2, timeout=15)
    finally:
        for holder in holders:
            holder.close()  # rolls back: the held ids were never appended
    racing.join(timeout=30)
    assert not racing.is_alive()
    return outcomes, {str(a), str(b)}


def _stream_events(committed, owner, stream):
    with committed() as session:
        events = event_store.read_stream(session, owner_id=owner, stream=stream, limit=1000)
        return [(str(e.event_id), e.version, e.position) for e in events]


def _in_request_order(stored, ids):
    """Stored (id, version, position) rows are the request's ids, at versions 1..n, with
    positions rising in the same order."""
    positions = [position for _, _, position in stored]
    return [(i, v) for i, v, _ in stored] == [
        (str(event_id), version) for version, event_id in enumerate(ids, start=1)
    ] and positions == sorted(positions)


def test_appends_of_shared_ids_in_crossed_orders_let_one_win_without_a_deadlock(
    committed, owner, engine
):
    def write(i, ids):
        with committed.begin() as session:
            events = _events(ids)
            return event_store.append(session, owner_id=owner, stream=f"d-{i}", events=events)

    outcomes, shared = _crossing(committed, engine, owner, write)
    won = [i for i, o in enumerate(outcomes) if isinstance(o, event_store.AppendResult)]
    lost = [o for o in outcomes if isinstance(o, event_store.EventIdTaken)]
    assert (len(won), len(lost)) == (1, 1), outcomes
    assert lost[0].status == 409 and set(lost[0].extra["event_ids"]) <= shared
    assert [v for _, v, _ in _stream_events(committed, owner, f"d-{won[0]}")] == [1, 2, 3]
    assert _stream_events(committed, owner, f"d-{1 - won[0]}") == []


def test_batches_of_shared_ids_in_crossed_orders_are_decided_not_left_pending(
    committed, owner, engine
):
    def write(i, ids):
        with committed.begin() as session:
            events = [(f"d-{i}", event) for event in _events(ids)]
            batch_id = event_batches.accept(session, owner_id=owner, events=events).id
        return event_batches.persist_in_transaction(committed, batch_id)

    outcomes, shared = _crossing(committed, engine, owner, write)
    assert sorted(outcomes, key=str) == ["persisted", "rejected"], outcomes
    winner = outcomes.index("persisted")
    with committed() as session:
        batches = session.scalars(select(EventBatch).where(EventBatch.owner_id == owner))
        rejected = next(batch for batch in batches if batch.status == "rejected")
    reasons = {r["event_id"]: (r["status"], r.get("reason")) for r in rejected.results}
    taken = ("rejected", f"this event_id was appended to stream 'd-{winner}'")
    assert [reasons[event_id] for event_id in sorted(shared)] == [taken, taken]
    assert [v for _, v, _ in _stream_events(committed, owner, f"d-{winner}")] == [1, 2, 3]


def test_many_appends_of_the_same_ids_in_either_order_let_exactly_one_win(committed, owner):
    # The probe that found the deadlock: four requests, each to its own stream, with the
    # same 300 ids, every other one reversed. It deadlocked in most rounds.
    for round_ in range(3):
        ids = [uuid.uuid4() for _ in range(300)]
        orders = [ids if i % 2 == 0 else ids[::-1] for i in range(4)]

        def write(i, round_=round_, orders=orders):
            with committed.begin() as session:
                events = _events(orders[i])
                stream = f"r{round_}-{i}"
                return event_store.append(session, owner_id=owner, stream=stream, events=events)

        outcomes = run_together(4, write)
        won = [i for i, o in enumerate(outcomes) if isinstance(o, event_store.AppendResult)]
        lost = [o for o in outcomes if isinstance(o, event_store.DuplicateEventIds)]
        assert (len(won), len(lost)) == (1, 3), outcomes
        stored = _stream_events(committed, owner, f"r{round_}-{won[0]}")
        assert _in_request_order(stored, orders[won[0]])


def test_two_batches_of_the_same_ids_in_opposite_orders_are_decided(committed, owner):
    for round_ in range(4):
        ids = [uuid.uuid4() for _ in range(1000)]
        orders = [ids, ids[::-1]]

        def write(i, round_=round_, orders=orders):
            with committed.begin() as session:
                events = [(f"r{round_}-{i}", event) for event in _events(orders[i])]
                batch_id = event_batches.accept(session, owner_id=owner, events=events).id
            return event_batches.persist_in_transaction(committed, batch_id)

        outcomes = run_together(2, write)
        assert sorted(outcomes, key=str) == ["persisted", "rejected"], outcomes


def test_events_with_ids_keep_the_requests_order_not_the_ids(committed, owner):
    # Rows are inserted in the ids' order; versions and positions follow the request's.
    ids = sorted((uuid.uuid4() for _ in range(20)), reverse=True)
    with committed.begin() as session:
        result = event_store.append(session, owner_id=owner, stream="kept", events=_events(ids))
    stored = _stream_events(committed, owner, "kept")
    assert _in_request_order(stored, ids)
    assert result.positions == [position for _, _, position in stored]

    ids = sorted((uuid.uuid4() for _ in range(20)), reverse=True)
    streams = ["one", "two"]
    with committed.begin() as session:
        events = [(streams[n % 2], event) for n, event in enumerate(_events(ids))]
        batch_id = event_batches.accept(session, owner_id=owner, events=events).id
    assert event_batches.persist_in_transaction(committed, batch_id) == "persisted"
    with committed() as session:
        results = event_batches.get(session, owner_id=owner, batch_id=batch_id).results
    positions = [r["position"] for r in results]
    assert positions == sorted(positions)
    for number, stream in enumerate(streams):
        assert _in_request_order(_stream_events(committed, owner, stream), ids[number::2])
