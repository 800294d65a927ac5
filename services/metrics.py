"""Domain counters, without a metrics library.

Services say what happened: `count(WEBHOOK_DELIVERIES, outcome="succeeded")` right away, or
`count_after_commit(session, JOBS_FINISHED, status="succeeded")` for something that is
true only once the caller's transaction commits (a rollback drops it). Each process's
composition root installs the sink that turns these calls into Prometheus samples
(`telemetry/prometheus.py`); with no sink installed, counting does nothing.

Adding a counter is adding a `CounterSpec` to `COUNTERS`: the Prometheus side builds its
metrics from that tuple, as `conveyor_<name>_total`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from models.db import UnitOfWork


@dataclass(frozen=True)
class CounterSpec:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    # Label values known in advance: their series exist (at 0) before anything happens, so
    # rate() and absent() behave from the first scrape.
    initial: tuple[Mapping[str, str], ...] = ()


JOB_END_STATUSES = ("succeeded", "failed", "cancelled", "timed_out")

JOBS_SUBMITTED = CounterSpec("jobs_submitted", "Jobs accepted by POST /v1/jobs.")
JOBS_FINISHED = CounterSpec(
    "jobs_finished",
    "Jobs that reached a terminal status, counted by the process that ended them.",
    ("status",),
    tuple({"status": status} for status in JOB_END_STATUSES),
)
EVENTS_APPENDED = CounterSpec("events_appended", "Events appended to the event log.")
# Outcomes, as services/webhook_delivery.py records an attempt: "succeeded" (2xx), "failed"
# (another attempt is scheduled), "dead" (no more attempts: 410, the schedule ran out, the
# endpoint was disabled), "fenced" (another worker took the delivery over meanwhile).
WEBHOOK_OUTCOMES = ("succeeded", "failed", "dead", "fenced")
WEBHOOK_DELIVERIES = CounterSpec(
    "webhook_deliveries",
    "Webhook delivery attempts by outcome.",
    ("outcome",),
    tuple({"outcome": outcome} for outcome in WEBHOOK_OUTCOMES),
)

COUNTERS = (JOBS_SUBMITTED, JOBS_FINISHED, EVENTS_APPENDED, WEBHOOK_DELIVERIES)

Sink = Callable[[CounterSpec, float, Mapping[str, str]], None]


def _discard(spec: CounterSpec, amount: float, labels: Mapping[str, str]) -> None:
    return None


_sink: Sink = _discard
_PENDING = "conveyor.metrics"


def install(sink: Sink) -> Sink:
    """Send every count of this process to `sink` from now on; the sink it replaces."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def count(spec: CounterSpec, amount: float = 1, **labels: str) -> None:
    """Count something that has happened, whatever becomes of any transaction."""
    if amount:
        _sink(spec, amount, labels)


def count_after_commit(
    session: UnitOfWork, spec: CounterSpec, amount: float = 1, **labels: str
) -> None:
    """Count something once `session` commits; its rollback forgets it."""
    if amount:
        session.info.setdefault(_PENDING, []).append((spec, amount, labels))


def count_committed(info: dict[str, Any]) -> None:
    """Count what `count_after_commit` kept in a committed unit of work's `info`."""
    for spec, amount, labels in info.pop(_PENDING, ()):
        count(spec, amount, **labels)


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    count_committed(session.info)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:
        session.info.pop(_PENDING, None)
