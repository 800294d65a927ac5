"""A job as clients see it: the API's answers and the `data` of job webhooks share it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, bindparam, select

from models import Job

# The columns `job_json` reads, for reads and RETURNING clauses that skip the ORM (plus
# `metadata`, under the ORM's attribute name `metadata_`, so a row and a Job look alike).
_COLUMNS = Job.__table__.c
COLUMNS = (
    "id", "agent_id", "agent_version", "status", "input", "output", "error", "attempt",
    "max_attempts", "timeout_s", "webhook_url", "created_at", "started_at", "finished_at",
)  # fmt: skip
VIEW: Select[Any] = select(
    *(_COLUMNS[name] for name in COLUMNS), _COLUMNS["metadata"].label("metadata_")
).where(_COLUMNS["id"] == bindparam("job_id"), _COLUMNS["owner_id"] == bindparam("owner_id"))


def job_json(job: Any) -> dict[str, Any]:
    """`job` is a Job or a row of `VIEW`."""
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
        "webhook_url": job.webhook_url,
        "metadata": job.metadata_,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
