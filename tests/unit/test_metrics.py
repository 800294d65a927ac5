"""services.metrics: counts reach the installed sink, after commit when asked to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from services import metrics
from services.metrics import EVENTS_APPENDED, JOBS_FINISHED, WEBHOOK_DELIVERIES
from tests import prom

Seen = list[tuple[str, float, dict[str, str]]]


@pytest.fixture
def seen() -> Iterator[Seen]:
    counted: Seen = []
    previous = metrics.install(
        lambda spec, amount, labels: counted.append((spec.name, amount, dict(labels)))
    )
    yield counted
    metrics.install(previous)


def test_count_reaches_the_sink_at_once(seen: Seen) -> None:
    metrics.count(WEBHOOK_DELIVERIES, outcome="succeeded")
    metrics.count(EVENTS_APPENDED, 0)  # nothing happened: nothing to say
    assert seen == [("webhook_deliveries", 1, {"outcome": "succeeded"})]


def test_count_after_commit_waits_for_the_commit(seen: Seen, engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        metrics.count_after_commit(session, JOBS_FINISHED, 2, status="failed")
        assert seen == []
        session.commit()
        assert seen == [("jobs_finished", 2, {"status": "failed"})]
        session.execute(text("SELECT 1"))
        session.commit()  # a later commit does not count it again
    assert len(seen) == 1


def test_a_rollback_forgets_what_it_would_have_counted(seen: Seen, engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        metrics.count_after_commit(session, EVENTS_APPENDED, 5)
        session.rollback()
        session.execute(text("SELECT 1"))
        metrics.count_after_commit(session, EVENTS_APPENDED, 1)
        session.commit()
    assert seen == [("events_appended", 1, {})]


def test_every_counter_has_a_distinct_name_and_known_labels() -> None:
    names = [spec.name for spec in metrics.COUNTERS]
    assert len(names) == len(set(names))
    for spec in metrics.COUNTERS:
        for labels in spec.initial:
            assert set(labels) == set(spec.labels), spec


def test_the_prometheus_sink_counts_by_label() -> None:
    from telemetry import prometheus

    name = "conveyor_jobs_finished_total"
    before = prom.parse(prometheus.exposition().decode())
    previous = prometheus.install()
    try:
        metrics.count(JOBS_FINISHED, status="timed_out")
        metrics.count(JOBS_FINISHED, 2, status="failed")
    finally:
        metrics.install(previous)
    after = prom.parse(prometheus.exposition().decode())
    assert (
        prom.value(after, name, status="timed_out")
        == prom.value(before, name, status="timed_out") + 1
    )
    assert prom.value(after, name, status="failed") == prom.value(before, name, status="failed") + 2
