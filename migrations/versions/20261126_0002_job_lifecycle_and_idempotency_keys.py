"""job lifecycle and idempotency keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 14:08:05.410905
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("owner_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("location", sa.String(length=300), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_idempotency_keys_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("owner_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    # Existing jobs were granted their max_attempts once.
    op.add_column("jobs", sa.Column("attempt_budget", sa.Integer(), nullable=True))
    op.execute("UPDATE jobs SET attempt_budget = max_attempts")
    op.alter_column("jobs", "attempt_budget", nullable=False)
    op.add_column("jobs", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("queue_deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("run_after", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("jobs", "cancel_requested_at")
    op.drop_column("jobs", "run_after")
    op.drop_column("jobs", "queue_deadline_at")
    op.drop_column("jobs", "deadline_at")
    op.drop_column("jobs", "attempt_budget")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
