"""events: no foreign key from owner_id to users

PostgreSQL checks a foreign key with a trigger per inserted row: an SPI query on users for
each event. Measured with EXPLAIN ANALYZE on inserts of 1,000 events (the batch ingestion's
statement), that trigger took 4.6-8.7 ms of 17.6-30.9 ms, about a third of the insert.
Nothing is lost with it: users are never deleted, the log refuses UPDATE and DELETE, and
every event's owner is the authenticated user of the request, or the owner of a batch
row, which keeps its own foreign key (docs/DECISIONS.md, "Event store").

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 19:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("fk_events_owner_id_users"), "events", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(op.f("fk_events_owner_id_users"), "events", "users", ["owner_id"], ["id"])
