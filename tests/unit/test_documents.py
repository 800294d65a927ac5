"""Document writes racing on real, separate PostgreSQL connections, and the read cache
against commits made elsewhere. These tests commit: each works on a user of its own."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services import documents, event_store
from services.cache import VersionedCache
from services.errors import NotFound, PreconditionFailed
from services.preconditions import VersionCondition
from tests.conftest import new_user
from tests.helpers import poll, run_together, waiting_for_locks

LIMITS = documents.Limits()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def doc(factory: sessionmaker[Session]) -> tuple[uuid.UUID, uuid.UUID]:
    """A committed document at version 1: (owner id, document id)."""
    with factory.begin() as session:
        user = new_user(session)
        document = documents.create(
            session, owner_id=user.id, fields={"title": "T", "content": "v1"}, limits=LIMITS
        )
    return user.id, document.id


def update(factory, owner_id, document_id, if_version, content):  # type: ignore[no-untyped-def]
    with factory.begin() as session:
        return documents.update(
            session,
            owner_id=owner_id,
            document_id=document_id,
            fields={"content": content},
            limits=LIMITS,
            condition=VersionCondition.at(if_version),
        ).version


def stream_versions(factory, owner_id, document_id) -> list[tuple[int, int, str]]:  # type: ignore[no-untyped-def]
    with factory() as session:
        events = event_store.read_stream(
            session, owner_id=owner_id, stream=f"document-{document_id}"
        )
        return [(e.version, e.data["version"], e.data.get("content")) for e in events]


def waiting_for_a_row_lock(engine: Engine) -> bool:
    return waiting_for_locks(engine, "%FROM documents%FOR UPDATE%") > 0


def test_the_second_writer_of_a_version_waits_then_fails_its_precondition(engine, factory, doc):
    owner_id, document_id = doc
    first = factory()
    first.begin()
    documents.update(
        first,
        owner_id=owner_id,
        document_id=document_id,
        fields={"content": "first"},
        limits=LIMITS,
        condition=VersionCondition.at(1),
    )
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            outcome["version"] = update(factory, owner_id, document_id, 1, "second")
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=second)
    thread.start()
    try:
        # The second writer is blocked on the row lock the first one holds.
        poll(lambda: waiting_for_a_row_lock(engine) or not thread.is_alive(), timeout=10)
        assert thread.is_alive(), f"the second writer did not wait: {outcome}"
        first.commit()
    finally:
        first.close()
        thread.join(timeout=10)
    assert isinstance(outcome.get("error"), PreconditionFailed), outcome
    assert outcome["error"].extra == {"current_version": 2}
    assert stream_versions(factory, owner_id, document_id) == [(1, 1, "v1"), (2, 2, "first")]


def test_of_many_concurrent_updates_of_one_version_exactly_one_wins(factory, doc):
    owner_id, document_id = doc
    results = run_together(8, lambda i: update(factory, owner_id, document_id, 1, f"w{i}"))
    winners = [r for r in results if r == 2]
    losers = [r for r in results if isinstance(r, PreconditionFailed)]
    assert len(winners) == 1 and len(losers) == 7, results
    winner = results.index(2)
    assert stream_versions(factory, owner_id, document_id) == [(1, 1, "v1"), (2, 2, f"w{winner}")]


def test_concurrent_updates_without_a_precondition_all_land_in_order(factory, doc):
    owner_id, document_id = doc
    results = run_together(8, lambda i: update(factory, owner_id, document_id, None, f"w{i}"))
    assert sorted(results) == list(range(2, 10)), results
    versions = stream_versions(factory, owner_id, document_id)
    assert [(v, dv) for v, dv, _ in versions] == [(n, n) for n in range(1, 10)]
    # Each event holds what its own writer wrote.
    assert {content for _, _, content in versions[1:]} == {f"w{i}" for i in range(8)}
    with factory() as session:
        current = documents.get(session, owner_id=owner_id, document_id=document_id)
    assert current.version == 9 and current.content == versions[-1][2]


def test_update_racing_delete_leaves_a_consistent_history(factory, doc):
    owner_id, document_id = doc

    def work(i: int) -> int:
        if i == 0:
            with factory.begin() as session:
                return documents.delete(
                    session,
                    owner_id=owner_id,
                    document_id=document_id,
                    condition=VersionCondition.at(1),
                ).version
        return update(factory, owner_id, document_id, 1, "edit")

    results = run_together(2, work)
    assert sum(r == 2 for r in results) == 1, results
    assert all(r == 2 or isinstance(r, PreconditionFailed | NotFound) for r in results)
    versions = stream_versions(factory, owner_id, document_id)
    assert [v for v, _, _ in versions] == [1, 2]


def test_read_through_never_serves_a_version_older_than_the_last_commit(factory, doc):
    owner_id, document_id = doc
    caches = [VersionedCache(1024 * 1024), VersionedCache(1024 * 1024)]  # two processes

    def read(cache: VersionedCache) -> tuple[int, bytes]:
        with factory() as session:
            return documents.read_through(
                session,
                owner_id=owner_id,
                document_id=document_id,
                cache=cache,
                render=lambda d: f"{d.version}:{d.content}".encode(),
            )

    for cache in caches:
        assert read(cache) == (1, b"1:v1")
        assert read(cache) == (1, b"1:v1")
        assert cache.stats().hits == 1
    update(factory, owner_id, document_id, None, "v2")  # by neither process's cache
    for cache in caches:
        assert read(cache) == (2, b"2:v2")
    with factory.begin() as session:
        documents.delete(session, owner_id=owner_id, document_id=document_id)
    for cache in caches:
        with pytest.raises(NotFound):
            read(cache)
