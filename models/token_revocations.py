import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# What a row revokes: one token (its `jti`), or a login's every token (its family, `fam`).
TOKEN = "token"  # noqa: S105 (a kind of row, not a secret)
FAMILY = "family"


class TokenRevocation(Base):
    """A revoked token or login. Redis answers the revocation checks (api/gate.py); these
    rows are what it is filled from again after it lost them (a restart without
    persistence), so a logout outlives a cache restart. Kept until `expires_at`, when the
    revoked tokens are refused for their age anyway, then swept."""

    __tablename__ = "token_revocations"
    __table_args__ = (
        CheckConstraint(f"kind IN ('{TOKEN}', '{FAMILY}')", name="kind"),
        Index(None, "expires_at"),
    )

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    # A token id or a family id (the id of the login's first refresh token): UUIDs we sign.
    revoked_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    # When the last token it refuses would expire by itself.
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
