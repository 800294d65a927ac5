import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.dialects.postgresql.base import ischema_names as postgresql_types
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from models.base import Base, TimestampMixin
from models.ids import new_id


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (xid8), which never wraps around."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "xid8"


# Let reflection (alembic's drift check) recognize the type instead of warning about it.
postgresql_types["xid8"] = Xid8


class Event(Base):
    """One entry of the append-only log. The database refuses UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("owner_id", "stream", "version"),
        # Idempotency is per owner: one owner's ids can neither collide with nor reveal another's.
        UniqueConstraint("owner_id", "event_id"),
        # The feed pages in (tx_id, position) order: see services/event_store.py.
        Index(None, "owner_id", "tx_id", "position"),
    )

    position: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    event_id: Mapped[uuid.UUID]
    # No foreign key to users: PostgreSQL would check it per inserted event, a third of a
    # batch insert's time, and users are never deleted (migration 0007, as the dropped
    # (owner_id, position) index that no query read).
    owner_id: Mapped[uuid.UUID]
    stream: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default="{}")
    recorded_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    # The writing transaction, so the feed can hold back events of transactions that may
    # still be followed by commits of older ones.
    tx_id: Mapped[int] = mapped_column(Xid8(), server_default=func.pg_current_xact_id())


# The streams clients write, as SQL: server-written streams (services/inputs.py's
# RESERVED_STREAM_PREFIXES; documents keep rows, jobs do not) are listed by their
# resources. Literal text, so that a query that repeats it may use the index below (a
# planner proves a partial index's predicate only from constants, never from parameters).
CLIENT_STREAM_NAMES = "name NOT LIKE 'job-%' AND name NOT LIKE 'document-%'"


class Stream(TimestampMixin, Base):
    """One row per stream: its current version, and the lock that serializes its appends."""

    __tablename__ = "streams"
    __table_args__ = (
        PrimaryKeyConstraint("owner_id", "name"),
        # `GET /v1/streams` pages the caller's client streams in byte order of their names,
        # and a `prefix` is a range of that order (migration 0013). The primary key's order
        # is the database's collation: a linguistic one (en_US, production's default) puts
        # a prefix's names in no single range, so that index cannot serve it.
        Index(
            "ix_streams_client_names",
            "owner_id",
            "name",
            # Rendered after the column: `name COLLATE "C"`. A column with a collation is no
            # expression, and PostgreSQL reflects it as the plain column, which this matches.
            postgresql_ops={"name": 'COLLATE "C"'},
            postgresql_where=text(CLIENT_STREAM_NAMES),
        ),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)


class EventBatch(TimestampMixin, Base):
    """A batch accepted with 202: its events wait here, durable, until a worker persists or
    rejects them (then `events` is emptied: they are in the log, or refused)."""

    __tablename__ = "event_batches"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'persisted', 'rejected')", name="status"),
        Index(
            "ix_event_batches_pending",
            "updated_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    # json, not jsonb: written whole and read whole, never queried inside. jsonb's parsing
    # on the way in and printing on the way out cost PostgreSQL ~5 ms of a batch (migration
    # 0009); json keeps the text as sent, checked only for being JSON.
    events: Mapped[list[Any]] = mapped_column(JSON)
    results: Mapped[list[Any] | None] = mapped_column(JSON)
    correlation_id: Mapped[str | None] = mapped_column(String(200))
    persisted_at: Mapped[dt.datetime | None]
