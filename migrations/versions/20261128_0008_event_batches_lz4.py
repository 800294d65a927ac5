"""event_batches: its two large JSON columns compressed with lz4 where the server has it

A batch row holds its thousand events (about 150 KB as JSON) from accept to persist, and
then their results (about 100 KB). PostgreSQL compresses such values with pglz by default,
which is several times slower than lz4 at about the same ratio on JSON. On the batch
persist path (in-process, 32 batches of 1,000 events, two alternated pairs) the results'
UPDATE went from 11.9-12.5 to 8.9-9.6 ms a batch and the batch's read from 6.3-7.0 to
4.9-6.2 ms. Values written before keep their compression; new ones use lz4.

A server built without lz4 (`compression method lz4 not supported`) keeps pglz: the
statement runs in a block that ignores that error, so the migration never fails for it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 00:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _set_compression(method: str) -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            ALTER TABLE event_batches
                ALTER COLUMN events SET COMPRESSION {method},
                ALTER COLUMN results SET COMPRESSION {method};
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            RAISE NOTICE 'event_batches keeps its compression: %', SQLERRM;
        END
        $$
        """
    )


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
