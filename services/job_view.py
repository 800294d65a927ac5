"""A job as clients see it: the API's answers and the `data` of job webhooks share it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple


class JobRow(NamedTuple):
    """A job as `job_json` reads it, for reads and RETURNING clauses that skip the ORM;
    `metadata` under the ORM's attribute name, so that a row and a Job look alike."""

    id: uuid.UUID
    agent_id: uuid.UUID
    agent_version: int
    status: str
    input: Any
    output: Any
    error: Any
    attempt: int
    max_attempts: int
    timeout_s: int
    queue_timeout_s: int | None
    webhook_url: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metadata_: dict[str, Any]


SELECT_LIST = ", ".join("metadata" if name == "metadata_" else name for name in JobRow._fields)
# psycopg's own parameter style: the statement goes to the driver as written (services/jobs.py).
VIEW = f"SELECT {SELECT_LIST} FROM jobs WHERE id = %(job_id)s AND owner_id = %(owner_id)s"  # noqa: S608


def job_json(job: Any) -> dict[str, Any]:
    """`job` is a Job or a JobRow."""
    return {
        "id": job.id,
        "agent_id": job.agent_id,
        "agent_version": job.agent_version,
        "status": job.status,
        "input": job.input,
        "output": job.output,
        "error": job.error,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        # None for a job submitted by a release before migration 0010.
        "queue_timeout_s": job.queue_timeout_s,
        "webhook_url": job.webhook_url,
        "metadata": job.metadata_,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
