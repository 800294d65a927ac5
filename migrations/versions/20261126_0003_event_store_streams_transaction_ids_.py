"""event store: streams, transaction ids, batches

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 14:18:19.984672
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_batches",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner_id", sa.UUID(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("events", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("correlation_id", sa.String(length=200), nullable=True),
        sa.Column("persisted_at", sa.DateTime(timezone=True), nullable=True),
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
        sa.CheckConstraint(
            "status IN ('pending', 'persisted', 'rejected')", name=op.f("ck_event_batches_status")
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_event_batches_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_batches")),
    )
    op.create_index(op.f("ix_event_batches_owner_id"), "event_batches", ["owner_id"], unique=False)
    op.create_index(
        "ix_event_batches_pending",
        "event_batches",
        ["updated_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "streams",
        sa.Column("owner_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
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
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_streams_owner_id_users")),
        sa.PrimaryKeyConstraint("owner_id", "name", name=op.f("pk_streams")),
    )
    # Existing events get this migration's transaction id: all of them are in the past.
    op.execute("ALTER TABLE events ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.execute(
        "INSERT INTO streams (owner_id, name, version) "
        "SELECT owner_id, stream, max(version) FROM events GROUP BY owner_id, stream"
    )
    op.create_index(
        op.f("ix_events_owner_id_tx_id_position"),
        "events",
        ["owner_id", "tx_id", "position"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_events_owner_id_tx_id_position"), table_name="events")
    op.drop_column("events", "tx_id")
    op.drop_table("streams")
    op.drop_index(
        "ix_event_batches_pending",
        table_name="event_batches",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index(op.f("ix_event_batches_owner_id"), table_name="event_batches")
    op.drop_table("event_batches")
