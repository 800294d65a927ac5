"""Batch ingestion throughput: events persisted per second by the worker's code path.

Accepts BATCHES batches of BATCH_SIZE events (as `POST /v1/events/batch` does), then
persists them the way the `events` worker task does, one transaction per batch, and prints
events/s. Run: `.venv/bin/python -m bench.batch_ingest` (DATABASE_URL, default local);
`make bench` runs it too, as the in-process row beside the figure through the API.

Writes to a scratch database it creates and drops.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from dataclasses import dataclass

import psycopg
from psycopg import sql

from models.db import make_engine, make_session_factory
from services import event_batches, users
from services.event_store import NewEvent
from services.passwords import Passwords
from tests.conftest import create_migrated_database

BATCHES = int(os.environ.get("BATCHES", "30"))
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "1000"))
STREAMS_PER_BATCH = int(os.environ.get("STREAMS_PER_BATCH", "50"))
# Every other batch's events carry client event ids, as an at-least-once client's do: the
# lookup of earlier ids once took 7.8 s a batch past 11,000 events (a generic plan that
# filtered every row of the owner's), which batches without ids never showed.


@dataclass(frozen=True)
class Result:
    total: int
    batch_size: int
    events_per_s: float
    p50_ms: float
    p95_ms: float


def measure(admin: str) -> Result:
    """Accept and persist the batches on a scratch database of server `admin` (a libpq
    URL to a database we may CREATE DATABASE from); the database is dropped at the end."""
    name = f"conveyor_bench_{uuid.uuid4().hex[:8]}"
    url = create_migrated_database(admin, name)
    engine = make_engine(url, pool_size=2)
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            owner = users.register(
                session,
                email="bench@example.com",
                password="p" * 12,
                passwords=Passwords(time_cost=1, memory_kib=1024),
            ).id
        ids = []
        for b in range(BATCHES):
            events = [
                (
                    f"bench-{b}-{i % STREAMS_PER_BATCH}",
                    NewEvent(
                        "bench.tick",
                        {"batch": b, "i": i, "payload": "x" * 100},
                        event_id=uuid.uuid4() if b % 2 else None,
                    ),
                )
                for i in range(BATCH_SIZE)
            ]
            with factory.begin() as session:
                ids.append(event_batches.accept(session, owner_id=owner, events=events).id)

        durations = []
        started = time.perf_counter()
        for batch_id in ids:
            t0 = time.perf_counter()
            with factory.begin() as session:
                assert event_batches.persist(session, batch_id) == "persisted"
            durations.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    total = BATCHES * BATCH_SIZE
    return Result(
        total=total,
        batch_size=BATCH_SIZE,
        events_per_s=total / elapsed,
        p50_ms=statistics.median(durations) * 1000,
        p95_ms=sorted(durations)[int(len(durations) * 0.95) - 1] * 1000,
    )


def main() -> None:
    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    result = measure(admin.replace("postgresql+psycopg://", "postgresql://"))
    print(f"batch ingestion: {result.total} events in {BATCHES} batches of {BATCH_SIZE}")
    print(f"  persisted events/s : {result.events_per_s:,.0f}  (target >= 20,000)")
    print(f"  per batch p50/p95  : {result.p50_ms:.1f} / {result.p95_ms:.1f} ms")
    print(f"  ratio to target    : {result.events_per_s / 20_000:.2f}")


if __name__ == "__main__":
    main()
