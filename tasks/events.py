import uuid

from celery import shared_task

from services import event_batches
from tasks.deps import deps_of


@shared_task(
    name="conveyor.events.persist_batch",
    queue="events",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def persist_batch(self, batch_id: str) -> str | None:
    """Persist an accepted batch in one transaction; a repeat finds it done."""
    return event_batches.persist_in_transaction(deps_of(self).session_factory, uuid.UUID(batch_id))
