"""One attempt of a job, from claim to result, without a transaction open during the run."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from services import agent_runner, jobs
from services.agent_runner import AgentError

log = structlog.get_logger(__name__)

Runner = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def execute(
    session_factory: sessionmaker[Session],
    job_id: uuid.UUID,
    *,
    lease_s: int,
    runner: Runner = agent_runner.run,
) -> str | None:
    """Run the job if this delivery can claim it; the status it ended in, or None."""
    with session_factory.begin() as session:
        claim = jobs.claim(session, job_id=job_id, lease_s=lease_s)
    if claim is None:
        log.info("job.not_claimed", job_id=str(job_id))
        return None

    try:
        output = runner(claim.agent_config, claim.input)
    except AgentError as error:
        return _record(session_factory, claim, "failed", error=error.as_error())
    except Exception:
        log.exception("job.runner_crashed", job_id=str(job_id), attempt=claim.attempt)
        # Our bug, not the user's input: say so without leaking internals.
        crash = {"type": "internal", "message": "the agent runner failed unexpectedly"}
        return _record(session_factory, claim, "failed", error=crash)
    return _record(session_factory, claim, "succeeded", output=output)


def _record(
    session_factory: sessionmaker[Session],
    claim: jobs.Claim,
    status: str,
    *,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> str | None:
    with session_factory.begin() as session:
        if status == "succeeded":
            recorded = jobs.succeed(session, claim, output or {})
        else:
            recorded = jobs.fail(session, claim, error or {})
    if not recorded:
        # Another worker took the job over after our lease ran out; its result stands.
        log.warning("job.result_fenced", job_id=str(claim.job_id), attempt=claim.attempt)
        return None
    log.info("job.finished", job_id=str(claim.job_id), attempt=claim.attempt, status=status)
    return status
