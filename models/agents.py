import datetime as dt
import uuid
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, IdMixin, TimestampMixin


class Agent(IdMixin, TimestampMixin, Base):
    __tablename__ = "agents"
    __table_args__ = (Index(None, "owner_id", "id"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    instructions: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    tools: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    max_steps: Mapped[int] = mapped_column(Integer, default=8, server_default="8")
    timeout_s: Mapped[int | None] = mapped_column(Integer)
    # Bumped on every update; a job copies the configuration of the version it was given.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Soft delete: jobs that ran this agent stay readable and keep their foreign key.
    deleted_at: Mapped[dt.datetime | None]
