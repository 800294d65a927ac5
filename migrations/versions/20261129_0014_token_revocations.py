"""token revocations: logouts and revoked logins kept in PostgreSQL, not only in Redis

Redis answers the revocation checks; a Redis that restarts without persistence forgot
them, and logged-out tokens worked again. These rows are what Redis is filled from again
(api/revocation_store.py). A new, empty table: the previous release neither reads nor
writes it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_revocations",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("revoked_id", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.UUID(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "revoked_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('token', 'family')", name=op.f("ck_token_revocations_kind")),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_token_revocations_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("kind", "revoked_id", name=op.f("pk_token_revocations")),
    )
    op.create_index(
        op.f("ix_token_revocations_expires_at"), "token_revocations", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_token_revocations_expires_at"), table_name="token_revocations")
    op.drop_table("token_revocations")
