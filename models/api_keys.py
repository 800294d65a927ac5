import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, IdMixin


class ApiKey(IdMixin, Base):
    """A credential for machine clients. Only its SHA-256 is kept; the key is shown once."""

    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "owner_id", "id"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    # The key's first characters, kept in clear so that its owner can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # Hex SHA-256 of the whole key: what a request's X-API-Key is looked up by.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    # Written at most once a minute per key (services/api_keys.py), not on every request.
    last_used_at: Mapped[dt.datetime | None]
    # Revoked keys stay as rows (who had which key, and until when) but never authenticate.
    revoked_at: Mapped[dt.datetime | None]
