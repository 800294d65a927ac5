"""event_batches: events and results as json, not jsonb

Both are written whole (a batch's events when it is accepted, their results when it is
persisted) and read whole; no query looks inside them. jsonb parses a value into its binary
form on the way in and prints it back on the way out; json only checks the text and keeps
it. For a batch of 1,000 events (~165 KB), measured on this machine's PostgreSQL 15 with
lz4: insert 3.2-5.2 ms as jsonb against 1.2-1.7 ms as json, read back 2.0-3.0 against
0.7-0.8 ms; the results' UPDATE gains in proportion. That is the web's INSERT, the worker's
SELECT and its UPDATE of every batch.

The rewrite takes the table's lock for as long as it copies the rows. Both assignment
casts exist (json -> jsonb, jsonb -> json), so a process of the previous release writing
`$1::JSONB` into the new column, or this release's `$1::JSON` into the old one, still works
during a rolling deploy. The lz4 compression of 0008 is set again: a type change may leave
the column's compression as it was, and setting it costs nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 05:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _retype(type_name: str) -> None:
    op.execute(
        f"""
        ALTER TABLE event_batches
            ALTER COLUMN events TYPE {type_name} USING events::{type_name},
            ALTER COLUMN results TYPE {type_name} USING results::{type_name}
        """
    )
    op.execute(
        """
        DO $$
        BEGIN
            ALTER TABLE event_batches
                ALTER COLUMN events SET COMPRESSION lz4,
                ALTER COLUMN results SET COMPRESSION lz4;
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            RAISE NOTICE 'event_batches keeps its compression: %', SQLERRM;
        END
        $$
        """
    )


def upgrade() -> None:
    _retype("json")


def downgrade() -> None:
    _retype("jsonb")
