"""jobs.queue_timeout_s: a job's queue timeout, kept to count each wait in the queue anew

The queue deadline was set once at submit (`created_at + queue timeout`) and the timeout
itself not kept: a manual retry recomputed it as `queue_deadline_at - created_at`, which
grew by the job's age at every retry, and a re-queue after a transient failure or a lost
worker kept the submit's deadline. Now every entry into `queued` sets the deadline to when
the job may run (now, or the end of its backoff) + this column.

The backfill gives every existing job with a deadline the timeout that deadline was counted
with (its submit's, or what the old retry made of it); it rewrites those rows once. A job
without a deadline has no queue timeout, as before.

Run it before the new release starts: the new submit writes the column. The previous
release keeps working on it during a rolling deploy; the jobs it submits have NULL, and the
new release reads their timeout the old way the first time it queues them again
(services.job_transitions.waits_anew).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 10:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("queue_timeout_s", sa.Integer(), nullable=True))
    op.execute(
        """
        UPDATE jobs
        SET queue_timeout_s = ceil(extract(epoch FROM queue_deadline_at - created_at))::int
        WHERE queue_deadline_at IS NOT NULL
        """
    )


def downgrade() -> None:
    op.drop_column("jobs", "queue_timeout_s")
