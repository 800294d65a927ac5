"""documents: current state, full-text search vector, metadata index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 14:23:16.088201
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A tsvector holds at most 1 MiB, and a content of many distinct short words makes one about
# twice its own size, so a 1 MiB document can exceed it. Such a document is indexed by its
# title and the first 100,000 characters of its content (at most ~600 KB of tsvector, even
# for one-character words of four-byte characters) instead of failing to save.
SEARCH_VECTOR_FUNCTION = """
CREATE FUNCTION conveyor_document_search_vector(title text, content text)
RETURNS tsvector LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN setweight(to_tsvector('english', coalesce(title, '')), 'A')
        || setweight(to_tsvector('english', coalesce(content, '')), 'B');
EXCEPTION WHEN program_limit_exceeded THEN
    RETURN setweight(to_tsvector('english', coalesce(title, '')), 'A')
        || setweight(to_tsvector('english', left(coalesce(content, ''), 100000)), 'B');
END
$$
"""


def upgrade() -> None:
    op.execute(SEARCH_VECTOR_FUNCTION)
    op.create_table(
        "documents",
        sa.Column("owner_id", sa.UUID(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "content_type", sa.String(length=200), server_default="text/plain", nullable=False
        ),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="{}",
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed("conveyor_document_search_vector(title, content)", persisted=True),
            nullable=False,
        ),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_documents_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
    )
    op.create_index(
        op.f("ix_documents_metadata"),
        "documents",
        ["metadata"],
        unique=False,
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    )
    op.create_index(op.f("ix_documents_owner_id_id"), "documents", ["owner_id", "id"], unique=False)
    op.create_index(
        op.f("ix_documents_search_vector"),
        "documents",
        ["search_vector"],
        unique=False,
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_documents_search_vector"), table_name="documents")
    op.drop_index(op.f("ix_documents_owner_id_id"), table_name="documents")
    op.drop_index(op.f("ix_documents_metadata"), table_name="documents")
    op.drop_table("documents")
    op.execute("DROP FUNCTION conveyor_document_search_vector(text, text)")
