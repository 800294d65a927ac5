"""One attempt of a job, from claim to result, without a transaction open during the run.

While the runner works, the process's watcher thread watches the attempt (job_watch.Watch).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import structlog

from models.db import UnitOfWork
from services import agent_runner, job_transitions
from services.agent_runner import AgentError, Stopped
from services.errors import in_chain
from services.job_policy import JobPolicy
from services.job_transitions import Claim
from services.job_units import Held, SessionFactory, Units, in_transaction
from services.job_watch import Watch
from services.log_config import LineLog

log = structlog.get_logger(__name__)
# The two lines every job writes, the same JSON by a shorter way (log_config.LineLog).
job_lines = LineLog(__name__)

Runner = Callable[..., dict[str, Any]]


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
        except Exception as error:
            if interrupts and in_chain(error, interrupts):
                # The time limit hit inside a library, which raised an error of its own
                # while handling it: psycopg's failed rollback of the interrupted statement.
                return _stopped(units, claim, "timed_out")
            log.exception("job.runner_crashed", job_id=str(claim.job_id), attempt=claim.attempt)
            # Our bug, not the user's input: say so without leaking internals.
            crash = {"type": "internal", "message": "the agent runner failed unexpectedly"}
            return _end(units, claim, "failed", error=crash)
    return _end(units, claim, "succeeded", output=output)


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
        left = in_transaction(
            units.session,
            units.carrying_held(
                lambda session: job_transitions.retry_later(
                    session, claim, error=error.as_error(), delay_s=delay, policy=policy
                )
            ),
        )
        if left == "queued":
            log.info("job.retry_scheduled", job_id=str(claim.job_id), delay_s=round(delay, 3))
            return left
        if left == "cancelled":  # a cancel asked for during the attempt: no retry
            return _finished(claim, left)
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
    return _finished(claim, status)


def _finished(claim: Claim, status: str) -> str:
    job_lines.info("job.finished", job_id=str(claim.job_id), attempt=claim.attempt, status=status)
    return status
