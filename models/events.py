import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class Event(Base):
    """One entry of the append-only log. The database refuses UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("owner_id", "stream", "version"),
        # Idempotency is per owner: one owner's ids can neither collide with nor reveal another's.
        UniqueConstraint("owner_id", "event_id"),
        Index(None, "owner_id", "position"),
    )

    position: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[uuid.UUID]
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    stream: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    recorded_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
