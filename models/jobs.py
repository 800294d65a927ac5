import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, IdMixin, TimestampMixin

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled", "timed_out")


class Job(IdMixin, TimestampMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')",
            name="status",
        ),
        CheckConstraint("attempt >= 0 AND attempt <= max_attempts", name="attempt"),
        Index(None, "owner_id", "id"),
        Index(None, "owner_id", "status", "id"),
        # Only unfinished jobs are swept; the partial index stays small as history grows.
        Index(
            "ix_jobs_unfinished",
            "status",
            "updated_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"))
    agent_version: Mapped[int] = mapped_column(Integer)
    # The agent's configuration at submit time: the job runs exactly this, even if the
    # agent is updated while the job waits.
    agent_config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    input: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[int] = mapped_column(Integer)
    # Attempts granted by the submit, and again by each manual retry.
    attempt_budget: Mapped[int] = mapped_column(Integer)
    lease_expires_at: Mapped[dt.datetime | None]
    # The current attempt must end by then (set when it is claimed).
    deadline_at: Mapped[dt.datetime | None]
    # How long the job may wait in the queue, each time it is queued (submit, retry, re-queue).
    queue_timeout_s: Mapped[int | None] = mapped_column(Integer)
    # A queued job not started by then ends `timed_out`: set each time it enters `queued`,
    # to when it may run (then, or at the end of its backoff) + queue_timeout_s.
    queue_deadline_at: Mapped[dt.datetime | None]
    # Backoff: a queued job is not claimed before this time.
    run_after: Mapped[dt.datetime | None]
    cancel_requested_at: Mapped[dt.datetime | None]
    webhook_url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict, server_default="{}")
    correlation_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
