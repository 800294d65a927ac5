"""How rows look to clients. One function per resource, used by every route that shows it."""

from __future__ import annotations

from typing import Any

from models import Agent, Document, Event, EventBatch, User
from services.documents import DocumentVersion, VersionSummary
from services.job_view import job_json as job_json  # shared with job webhooks
from services.streams import StreamInfo


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


def stream_json(stream: StreamInfo) -> dict[str, Any]:
    return {
        "stream": stream.name,
        "version": stream.version,
        "created_at": stream.created_at,
        "updated_at": stream.updated_at,
    }


def receipt_json(batch: EventBatch) -> dict[str, Any]:
    return {
        "receipt_id": batch.id,
        "status": batch.status,
        "results": batch.results,
        "accepted_at": batch.created_at,
        "persisted_at": batch.persisted_at,
    }


# On answers that carry a secret (an API key, a signing secret): no cache may keep one. A
# shared cache would not treat `X-API-Key` as it treats `Authorization`.
NO_STORE = {"Cache-Control": "no-store"}


def etag(version: int) -> str:
    return f'"{version}"'


def document_json(document: Document | DocumentVersion) -> dict[str, Any]:
    """A document, current (the row) or past (its event): the same shape for both."""
    return {**document_summary_json(document), "content": document.content}


def document_summary_json(document: Document | DocumentVersion) -> dict[str, Any]:
    """A document without its content, as lists show it."""
    return {
        "id": document.id,
        "title": document.title,
        "content_type": document.content_type,
        "metadata": document.metadata_,
        "version": document.version,
        "created_at": document.created_at,
        "updated_at": document.updated_at,
    }


def document_version_json(entry: VersionSummary) -> dict[str, Any]:
    return {
        "version": entry.version,
        "type": entry.type,
        "title": entry.title,
        "content_type": entry.content_type,
        "metadata": entry.metadata,
        "recorded_at": entry.recorded_at,
    }
