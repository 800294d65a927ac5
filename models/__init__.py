"""SQLAlchemy models. Imports nothing of the application."""

from models.agents import Agent
from models.api_keys import ApiKey
from models.base import Base
from models.documents import Document
from models.events import Event, EventBatch, Stream
from models.idempotency import IdempotencyKey
from models.jobs import JOB_STATUSES, TERMINAL_STATUSES, Job
from models.token_revocations import TokenRevocation
from models.users import User
from models.webhooks import (
    WebhookAttempt,
    WebhookCallbackSecret,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "Agent",
    "ApiKey",
    "Base",
    "Document",
    "Event",
    "EventBatch",
    "IdempotencyKey",
    "Job",
    "Stream",
    "TokenRevocation",
    "User",
    "WebhookAttempt",
    "WebhookCallbackSecret",
    "WebhookDelivery",
    "WebhookEndpoint",
]
