import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Computed, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, IdMixin, TimestampMixin

# Defined by migration 0004, redefined by 0012: the weighted tsvector of the NFKC form of a
# title (A) and a content (B). It falls back to the content's first characters when the whole
# would exceed PostgreSQL's 1 MiB tsvector limit, which a document of many distinct words can
# reach.
SEARCH_VECTOR_FUNCTION = "conveyor_document_search_vector"


class Document(IdMixin, TimestampMixin, Base):
    """The current state of a document; every version is also an event of `document-<id>`."""

    __tablename__ = "documents"
    __table_args__ = (
        Index(None, "owner_id", "id"),
        Index(None, "search_vector", postgresql_using="gin"),
        # Containment filters (`metadata @> '{"k": "v"}'`) only: jsonb_path_ops is smaller
        # and faster than the default operator class for exactly that.
        Index(
            None,
            "metadata",
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
        ),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(
        String(200), default="text/plain", server_default="text/plain"
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict, server_default="{}")
    # Bumped by every update and by the delete; equal to the version of its stream.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Soft delete: the document is gone for reads, its history stays in the event log.
    deleted_at: Mapped[dt.datetime | None]
    # Never loaded with the row (it can be as large as the content); only queried.
    search_vector: Mapped[str] = mapped_column(
        TSVECTOR,
        Computed(f"{SEARCH_VECTOR_FUNCTION}(title, content)", persisted=True),
        deferred=True,
    )
