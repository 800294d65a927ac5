"""Work that may happen only once a transaction has committed.

Services call `defer(session, message)`; the composition root installs a dispatcher that
receives the messages after a successful commit. A rollback drops them. This is how a job id
reaches the broker only when the job row exists, and how waiters learn of a change only when
the change is visible.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from models.db import UnitOfWork
from services import metrics

_PENDING = "conveyor.after_commit"


@dataclass(frozen=True)
class SendTask:
    """Publish a Celery task by name. Arguments are ids and small scalars, never rows."""

    name: str
    queue: str
    args: tuple[Any, ...] = ()
    # Celery publish options: countdown, soft_time_limit, time_limit.
    options: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Announce:
    """Tell waiting readers (long-polls, live tails) that `key` changed; they re-read."""

    key: str
    payload: str = ""


def job_key(job_id: uuid.UUID | str) -> str:
    return f"job:{job_id}"


def events_key(owner_id: uuid.UUID | str) -> str:
    return f"events:{owner_id}"


Message = SendTask | Announce
Dispatcher = Callable[[Sequence[Message]], None]


def defer(session: UnitOfWork, message: Message) -> None:
    session.info.setdefault(_PENDING, []).append(message)


def take(info: dict[str, Any]) -> dict[str, list[Any]]:
    """Everything a unit of work deferred (this module's messages, services.metrics'
    counts: lists in `info`), taken out of it: its commit then sets off nothing. `give`
    hands it to another unit, whose commit sets off both, in one dispatch."""
    taken = {key: value for key, value in info.items() if isinstance(value, list)}
    for key in taken:
        del info[key]
    return taken


def give(info: dict[str, Any], taken: dict[str, list[Any]]) -> None:
    """Add what `take` took to a unit's deferred work, ahead of its own."""
    for key, values in taken.items():
        info[key] = [*values, *info.get(key, ())]


def deliver(info: dict[str, Any], dispatch: Dispatcher) -> None:
    """Dispatch what was deferred in a committed unit of work's `info`."""
    messages = info.pop(_PENDING, None)
    if messages:
        dispatch(messages)


def committed(info: dict[str, Any], dispatch: Dispatcher) -> None:
    """Everything a session's `after_commit` events do (this module's listener and the
    counters' in services/metrics.py), for a unit of work that is not a session
    (models.db.OneStatement): both keep their deferred work in `info` alike."""
    deliver(info, dispatch)
    metrics.count_committed(info)


def install(factory: sessionmaker[Session], dispatch: Dispatcher) -> None:
    """Deliver deferred messages of sessions made by `factory` after each commit."""

    @event.listens_for(factory, "after_commit")
    def _after_commit(session: Session) -> None:
        deliver(session.info, dispatch)

    @event.listens_for(factory, "after_soft_rollback")
    def _after_rollback(session: Session, previous_transaction: Any) -> None:
        if previous_transaction.parent is None:
            session.info.pop(_PENDING, None)


CHANNEL_PREFIX = "conveyor:"


def channel(key: str) -> str:
    """The Redis pub/sub channel on which changes of `key` are announced."""
    return CHANNEL_PREFIX + key


def job_channel(job_id: uuid.UUID | str) -> str:
    return channel(job_key(job_id))


# Sends a commit's tasks and announcements, together; the outcome of each task, then of
# each announcement, in order (None: sent).
Publish = Callable[[Sequence[SendTask], Sequence[tuple[str, str]]], Sequence[Exception | None]]


def make_dispatcher(
    *, publish: Publish, on_error: Callable[[Message, Exception], None]
) -> Dispatcher:
    """A dispatcher over the given transport. A failed send is reported, not raised: the
    transaction has committed already, and the sweeper re-publishes what never arrived."""

    def dispatch(messages: Sequence[Message]) -> None:
        tasks = [m for m in messages if isinstance(m, SendTask)]
        announcements = [m for m in messages if isinstance(m, Announce)]
        ordered: list[Message] = [*tasks, *announcements]
        try:
            outcomes = publish(tasks, [(channel(a.key), a.payload) for a in announcements])
        except Exception as error:
            outcomes = [error] * len(ordered)
        for message, outcome in zip(ordered, outcomes, strict=True):
            if outcome is not None:
                on_error(message, outcome)

    return dispatch
