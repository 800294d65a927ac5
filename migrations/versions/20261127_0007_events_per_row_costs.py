"""events: no foreign key from owner_id to users, no (owner_id, position) index

Both cost something for every event written and bought nothing:
- PostgreSQL checks a foreign key with a trigger per inserted row, an SPI query on users
  for each event. EXPLAIN ANALYZE of inserts of 1,000 events (the batch ingestion's
  statement) put that trigger at 4.6-8.7 ms of 17.6-30.9 ms, about a third. Users are
  never deleted, the log refuses UPDATE and DELETE, and every event's owner is the
  authenticated user of the request, or the owner of a batch row, which keeps its own
  foreign key.
- No query reads the (owner_id, position) index since the feed pages by (owner_id, tx_id,
  position) (0003), and a position alone is found by the primary key. Without it the same
  insert took a median 12.8 ms against 14.9 ms (35 alternated pairs).
See docs/DECISIONS.md, "Event store".

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
    op.drop_index(op.f("ix_events_owner_id_position"), table_name="events")


def downgrade() -> None:
    op.create_index(
        op.f("ix_events_owner_id_position"), "events", ["owner_id", "position"], unique=False
    )
    op.create_foreign_key(op.f("fk_events_owner_id_users"), "events", "users", ["owner_id"], ["id"])
