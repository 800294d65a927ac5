"""How rows look to clients. One function per resource, used by every route that shows it."""

from __future__ import annotations

from typing import Any

from models import Agent, Event, EventBatch, Job, User


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "role": user.role}


def agent_json(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "provider": agent.provider,
        "model": agent.model,
        "instructions": agent.instructions,
        "params": agent.params,
        "tools": agent.tools,
        "max_steps": agent.max_steps,
        "timeout_s": agent.timeout_s,
        "version": agent.version,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


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


def event_json(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "stream": event.stream,
        "version": event.version,
        "position": event.position,
        "type": event.type,
        "data": event.data,
        "metadata": event.metadata_,
        "recorded_at": event.recorded_at,
    }


def receipt_json(batch: EventBatch) -> dict[str, Any]:
    return {
        "receipt_id": batch.id,
        "status": batch.status,
        "results": batch.results,
        "accepted_at": batch.created_at,
        "persisted_at": batch.persisted_at,
    }


def etag(version: int) -> str:
    return f'"{version}"'
