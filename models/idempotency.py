import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Integer, LargeBinary, PrimaryKeyConstraint, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class IdempotencyKey(Base):
    """The first answer to a request sent with an `Idempotency-Key`, replayed byte for byte."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (PrimaryKeyConstraint("owner_id", "key"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    # SHA-256 of method, path and canonical body: the same key with another body is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    location: Mapped[str | None] = mapped_column(String(300))
    etag: Mapped[str | None] = mapped_column(String(64))  # migration 0011
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now(), index=True)
