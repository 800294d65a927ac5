"""A job as clients see it: the API's answers and the `data` of job webhooks share it."""

from __future__ import annotations

from typing import Any

from models import Job


def job_json(job: Job) -> dict[str, Any]:
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
