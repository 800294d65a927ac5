"""Webhook subscriptions, the delivery outbox and its attempt log, and callback secrets."""

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, IdMixin, TimestampMixin

DELIVERY_STATUSES = ("pending", "failed", "succeeded", "dead")


class WebhookEndpoint(IdMixin, TimestampMixin, Base):
    """Where an owner wants events of some types delivered, and the keys that sign them."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index(None, "owner_id", "id"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    description: Mapped[str | None] = mapped_column(String(500))
    # `whsec_` + base64 of 32 random bytes. Kept in clear: signing needs the key itself.
    secret: Mapped[str] = mapped_column(String(100))
    # After a rotation the previous key keeps signing, alongside the new one, until then.
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[dt.datetime | None]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # Why the endpoint stopped receiving: the owner's words, a 410, or days of failures.
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[dt.datetime | None]
    # Since when every attempt has failed; None while deliveries succeed.
    failing_since: Mapped[dt.datetime | None]


class WebhookDelivery(IdMixin, TimestampMixin, Base):
    """One message to one receiver: an outbox row, written with the event that causes it.

    `next_attempt_at` is when the row is due. A worker claims a due row by pushing it to the
    end of its lease, so a worker that dies mid-delivery leaves a row that falls due again.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'failed', 'succeeded', 'dead')",
            name="status",
        ),
        # A subscription's delivery, or a job's own callback to its `webhook_url`.
        CheckConstraint("(endpoint_id IS NULL) <> (url IS NULL)", name="one_target"),
        Index(None, "endpoint_id", "id"),
        Index(None, "owner_id", "id"),
        # The sweeper looks only at unfinished rows; the index stays small as history grows.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'failed')"),
        ),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    url: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id"))
    event_type: Mapped[str] = mapped_column(String(64))
    # The `webhook-id` header: one per event, the same on every attempt and redelivery.
    message_id: Mapped[str] = mapped_column(String(64))
    # {"type", "timestamp", "data"}: the body, signed anew (with a new timestamp) per attempt.
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(server_default=func.now())
    last_attempt_at: Mapped[dt.datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(IdMixin, Base):
    """One try of a delivery, as the delivery log shows it."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index(None, "delivery_id", "id"),)

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempted_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # The first bytes of the receiver's answer, for the owner's debugging.
    response_excerpt: Mapped[str | None] = mapped_column(Text)


class WebhookCallbackSecret(Base):
    """The key that signs deliveries to jobs' own `webhook_url`, one per owner."""

    __tablename__ = "webhook_callback_secrets"

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
