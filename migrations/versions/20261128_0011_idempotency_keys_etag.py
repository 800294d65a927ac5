"""idempotency_keys.etag: the first answer's ETag, replayed with it

Agents and documents take an `Idempotency-Key` now (jobs did before), and their create
answers carry an ETag that a replay must carry too. The column is NULL for the answers
stored before, which had none to replay (jobs).

Adding a nullable column without a default changes the catalog only; the previous release
keeps working beside it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("etag", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("idempotency_keys", "etag")
