"""One attempt of a job, from claim to result, without a transaction open during the run.

While the runner works, a watcher thread renews the lease, looks for a cancel request and
watches the deadline; it tells the runner to stop through the `RunControl` it hands over.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import psycopg
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from models.db import UnitOfWork
from services import after_commit, agent_runner, job_transitions
from services.agent_runner import AgentError, Stopped
from services.job_policy import JobPolicy
from services.job_transitions import Claim, Heartbeat
from services.log_config import LineLog
from services.watcher import watcher

log = structlog.get_logger(__name__)
# The two lines every job writes, the same JSON by a shorter way (log_config.LineLog).
job_lines = LineLog(__name__)

Runner = Callable[..., dict[str, Any]]
SessionFactory = sessionmaker[Session]
T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)
# The events' unique (owner, stream, version): the baseline migration's name for it.
STREAM_VERSION_CONSTRAINT = "uq_events_owner_id_stream_version"
# A job still running this long after its claim is announced as running (see Held).
ANNOUNCE_RUNNING_WITHIN_S = 0.05
# Watches every attempt this process runs (Celery's prefork pool: one at a time); no first
# look comes sooner than the announcement's.
WATCHER = watcher("job-watcher", tick_s=ANNOUNCE_RUNNING_WITHIN_S)


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


class Watch:
    """The runner's `RunControl`, fed by the process's watcher thread, which renews the
    lease and looks for a cancel request in the database while the runner works."""

    def __init__(self, units: Units, claim: Claim, policy: JobPolicy):
        self.attempt = claim.attempt
        self.job_id = claim.job_id
        self.owner_id = claim.owner_id
        self._aborts: list[Callable[[], None]] = []
        self._units = units
        self._factory = units.session
        self._claim = claim
        self._policy = policy
        now = time.monotonic()
        self._deadline = now + claim.timeout_s
        self._next_beat = now + policy.heartbeat_s
        self._next_db_look = self._next_look(now)
        self._stop = threading.Event()
        self._done = threading.Event()
        self.reason: str | None = None

    def __enter__(self) -> Watch:
        WATCHER.add(self, min(time.monotonic() + ANNOUNCE_RUNNING_WITHIN_S, self._next_db_look))
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        WATCHER.remove(self)

    # RunControl ---------------------------------------------------------------------
    def checkpoint(self) -> None:
        if time.monotonic() >= self._deadline:
            self._halt("timed_out")
        if self._stop.is_set():
            raise Stopped(self.reason or "cancelled")

    def sleep(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while (remaining := until - time.monotonic()) > 0:
            self._stop.wait(min(remaining, max(0.0, self._deadline - time.monotonic()) + 0.001))
            self.checkpoint()

    def remaining_s(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def emit(self, event_type: str, data: Mapping[str, Any]) -> None:
        held = in_transaction(
            self._factory,
            lambda session: job_transitions.progress(session, self._claim, event_type, dict(data)),
        )
        if not held:
            self._halt("lost")
            self.checkpoint()

    def on_stop(self, abort: Callable[[], None]) -> None:
        self._aborts.append(abort)
        if self._stop.is_set():
            abort()

    # the watcher thread -------------------------------------------------------------
    def _halt(self, reason: str) -> None:
        if self._done.is_set():  # a look that was under way as the attempt ended
            return
        if self.reason is None:
            self.reason = reason
        already = self._stop.is_set()
        self._stop.set()
        if not already:
            for abort in self._aborts:
                try:
                    abort()  # e.g. close the model's response the runner is blocked on
                except Exception:
                    log.warning("job.abort_failed", job_id=str(self.job_id), exc_info=True)

    def check(self) -> float:
        """One look (services.watcher calls it when due): renew the lease when a heartbeat
        is due, else ask whether a cancel was requested; stop the runner at the deadline."""
        if self._done.is_set():
            return time.monotonic() + self._policy.cancel_poll_s
        try:
            self._units.send_held()  # the job runs on: say so now
            if time.monotonic() < self._next_db_look:
                return self._next_db_look
            if time.monotonic() >= self._next_beat:
                self._next_beat = time.monotonic() + self._policy.heartbeat_s
                with self._factory.begin() as session:
                    beat = job_transitions.heartbeat(session, self._claim, policy=self._policy)
                if beat == Heartbeat.LOST:
                    self._halt("lost")
                elif beat == Heartbeat.CANCEL:
                    self._halt("cancelled")
            else:
                with self._factory() as session:
                    wanted = job_transitions.cancel_requested(session, self._claim)
                if wanted is None:
                    self._halt("lost")
                elif wanted:
                    self._halt("cancelled")
        except Exception:
            # A database hiccup must not stop the watch; the lease has slack for retries.
            log.warning("job.watch_failed", job_id=str(self._claim.job_id), exc_info=True)
        now = time.monotonic()
        if now >= self._deadline:
            self._halt("timed_out")
        self._next_db_look = self._next_look(now)
        return self._next_db_look

    def _next_look(self, now: float) -> float:
        """After the poll interval, or at the deadline if that comes first."""
        next_at = now + self._policy.cancel_poll_s
        return min(next_at, self._deadline) if self._deadline > now else next_at


def execute(
    session_factory: SessionFactory,
    job_id: uuid.UUID,
    *,
    policy: JobPolicy,
    runner: Runner = agent_runner.run,
    interrupts: tuple[type[BaseException], ...] = (),
    single_statement: Callable[[], UnitOfWork] | None = None,
) -> str | None:
    """Run the job if this delivery can claim it; the status it was left in, or None.

    `interrupts` are exceptions the host raises into the runner when its own time limit
    hits (Celery's SoftTimeLimitExceeded); they end the attempt as timed out.
    `single_statement` makes the unit of work of the claim and of an end that is one
    statement (a models.db.OneStatement in the worker); by default, a session.
    """
    units = Units(session_factory, single_statement or session_factory, Held())

    def claim_and_hold(unit: UnitOfWork) -> Claim | None:
        claimed = job_transitions.claim(unit, job_id=job_id, policy=policy)
        units.held.hold(unit.info)
        return claimed

    claim = in_transaction(units.one_statement, claim_and_hold)
    if claim is None:
        log.info("job.not_claimed", job_id=str(job_id))
        return None
    job_lines.info("job.started", job_id=str(job_id), attempt=claim.attempt)
    try:
        return _attempt(units, claim, policy, runner, interrupts)
    finally:
        units.send_held()  # when no end carried it (a lost lease, say)


def _attempt(
    units: Units,
    claim: Claim,
    policy: JobPolicy,
    runner: Runner,
    interrupts: tuple[type[BaseException], ...],
) -> str | None:
    with Watch(units, claim, policy) as watch:
        try:
            output = runner(claim.agent_config, claim.input, control=watch)
        except Stopped as stop:
            return _stopped(units, claim, stop.reason)
        except interrupts:
            return _stopped(units, claim, "timed_out")
        except AgentError as error:
            return _failed(units, claim, error, policy)
        except Exception:
            log.exception("job.runner_crashed", job_id=str(claim.job_id), attempt=claim.attempt)
            # Our bug, not the user's input: say so without leaking internals.
            crash = {"type": "internal", "message": "the agent runner failed unexpectedly"}
            return _end(units, claim, "failed", error=crash)
    return _end(units, claim, "succeeded", output=output)


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


def _stopped(units: Units, claim: Claim, reason: str) -> str | None:
    if reason == "lost":
        log.warning("job.lease_lost", job_id=str(claim.job_id), attempt=claim.attempt)
        return None
    if reason == "cancelled":
        return _end(units, claim, "cancelled")
    error = {
        "type": "timeout",
        "message": f"the attempt did not finish within the job's {claim.timeout_s} s timeout",
    }
    return _end(units, claim, "timed_out", error=error)


def _failed(units: Units, claim: Claim, error: AgentError, policy: JobPolicy) -> str | None:
    if error.transient and claim.attempt < claim.max_attempts:
        delay = policy.backoff_s(claim.attempt, at_least=error.retry_after_s or 0)
        scheduled = in_transaction(
            units.session,
            units.carrying_held(
                lambda session: job_transitions.retry_later(
                    session, claim, error=error.as_error(), delay_s=delay, policy=policy
                )
            ),
        )
        if scheduled:
            log.info("job.retry_scheduled", job_id=str(claim.job_id), delay_s=round(delay, 3))
            return "queued"
    return _end(units, claim, "failed", error=error.as_error())


def _end(
    units: Units,
    claim: Claim,
    status: str,
    *,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> str | None:
    # Most jobs end in one statement; one with someone to tell (or taken from this worker)
    # ends in a transaction that writes the deliveries too (or finds it fenced). The first
    # unit's commit, whatever its statement did, also sends what the claim's held back.
    recorded = in_transaction(
        units.one_statement,
        units.carrying_held(
            lambda unit: job_transitions.finish_untold(
                unit, claim, status, output=output, error=error
            )
        ),
    ) or in_transaction(
        units.session,
        lambda session: job_transitions.finish(session, claim, status, output=output, error=error),
    )
    if not recorded:
        # Another worker or the sweeper moved the job on; their outcome stands.
        log.warning("job.result_fenced", job_id=str(claim.job_id), attempt=claim.attempt)
        return None
    job_lines.info("job.finished", job_id=str(claim.job_id), attempt=claim.attempt, status=status)
    return status
