"""Where a job attempt's writes run, and what their commits set off.

A worker's writes for an attempt run in units of work of their own: sessions, and for the
claim and most ends, one-statement units (models.db.OneStatement). `in_transaction` runs
one, once more after a failure that a second try gets past. What the claim's commit sets
off is held (`Held`) and goes with the attempt's next commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import psycopg
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.db import UnitOfWork
from services import after_commit

log = structlog.get_logger(__name__)

SessionFactory = sessionmaker[Session]
T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)
# The events' unique (owner, stream, version): the baseline migration's name for it.
STREAM_VERSION_CONSTRAINT = "uq_events_owner_id_stream_version"
# A job still running this long after its claim is announced as running (see Held).
ANNOUNCE_RUNNING_WITHIN_S = 0.05


def in_transaction(begin: Callable[[], U], work: Callable[[U], T]) -> T:
    """`work` in a unit of work of its own (`begin` makes one: a Session, or a
    models.db.OneStatement for work that is one statement), committed when it returns; once
    more, in a new one, after one of two failures that a second try gets past:

    - The pooled connection turned out dead. The worker's engine does not ping a
      connection at each checkout (a round trip per transaction, two per job), so after a
      database restart the first statement on an old connection fails, and every
      connection older than that failure is then dropped: the second try gets a fresh one.
      A COMMIT lost with its connection may have committed; the claim and the finish are
      fenced, so doing either twice finds the job already moved on and changes nothing.
    - An event's version was taken by a transaction that committed while this one waited
      for the job's row (job_transitions' one-statement claim and finish read the version
      in their statement's snapshot): the second try reads it afresh.
    """
    try:
        return _committed(begin, work)
    except DBAPIError as error:
        if error.connection_invalidated:
            log.info("db.reconnected", error=type(error.orig).__name__)
        elif not _version_taken(error):
            raise
    return _committed(begin, work)


def _committed(begin: Callable[[], U], work: Callable[[U], T]) -> T:
    unit = begin()
    try:
        result = work(unit)
        unit.commit()
        return result
    finally:
        unit.close()  # after a failure: rolls back, and forgets what the work deferred


def _version_taken(error: DBAPIError) -> bool:
    cause = error.orig
    return (
        isinstance(cause, psycopg.errors.UniqueViolation)
        and cause.diag.constraint_name == STREAM_VERSION_CONSTRAINT
    )


class Held:
    """What the claim's commit sets off (the job's waiters and the owner's event tails hear
    that it runs; the event is counted), held back: a job that ends soon sends it with its
    end, one round trip to Redis instead of two (a fifth of an echo job's CPU in the
    worker, `bench/job_cost.py`); otherwise the watcher sends it at its first look,
    `ANNOUNCE_RUNNING_WITHIN_S` after the claim. Whoever takes it first sends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, list[Any]] = {}

    def hold(self, info: dict[str, Any]) -> None:
        with self._lock:
            self._taken = after_commit.take(info)

    def take(self) -> dict[str, list[Any]]:
        with self._lock:
            taken, self._taken = self._taken, {}
            return taken


class Units(NamedTuple):
    """Where an attempt's writes run: sessions, and units for one-statement writes; and
    what the claim's commit set off, until it is sent."""

    session: SessionFactory
    one_statement: Callable[[], UnitOfWork]
    held: Held

    def carrying_held(self, work: Callable[[U], T]) -> Callable[[U], T]:
        """`work`, after handing its unit what the claim held back, which then goes with
        that unit's commit, whatever the work did (tried again, it goes again)."""
        carried = self.held.take()

        def carrying(unit: U) -> T:
            after_commit.give(unit.info, carried)
            return work(unit)

        return carrying

    def send_held(self) -> None:
        """Set off what the claim held back, if still held, by a unit with no statement."""
        taken = self.held.take()
        if taken:
            _committed(self.one_statement, lambda unit: after_commit.give(unit.info, taken))
