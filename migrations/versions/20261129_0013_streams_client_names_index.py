"""streams: a partial index of client streams' names in byte order, for GET /v1/streams

`GET /v1/streams` lists a caller's client streams by name, optionally under a `prefix`.
The primary key (owner_id, name) orders names by the database's collation; under a
linguistic one (en_US.utf8, which the postgres image gives new databases) the names under
a prefix form no range of that order, so a prefix was a filter over all of the owner's
streams. This index orders them by bytes (`COLLATE "C"`: stream names are ASCII), and
leaves out server-written streams (`job-`, `document-`), which the list does not show:
document streams have rows, and a page crossing them walked every one (78 ms past 30,000).

CREATE INDEX takes a SHARE lock on `streams`: appends wait while it builds (270 ms for
200,000 rows here). An index of this name built beforehand (CONCURRENTLY, by hand) is kept.
The previous release does not read it and keeps working beside it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_streams_client_names",
        "streams",
        ["owner_id", "name"],
        unique=False,
        postgresql_ops={"name": 'COLLATE "C"'},
        postgresql_where=sa.text("name NOT LIKE 'job-%' AND name NOT LIKE 'document-%'"),
        # An operator may have built it already, CONCURRENTLY (docs/operations.md).
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_streams_client_names", table_name="streams")
