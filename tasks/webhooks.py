import uuid

import structlog
from celery import shared_task

from services import webhook_delivery
from tasks.deps import deps_of

log = structlog.get_logger(__name__)


@shared_task(
    name="conveyor.webhooks.deliver",
    queue="webhooks",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The attempt itself is bounded by WEBHOOK_TIMEOUT_S (at most 60 s); these are backstops.
    soft_time_limit=150,
    time_limit=180,
)
def deliver(self, delivery_id: str) -> str | None:
    """One attempt of a webhook delivery; a message for a delivery that is not due, or is
    held by another worker, finds nothing to do."""
    deps = deps_of(self)
    return webhook_delivery.deliver(
        deps.session_factory, uuid.UUID(delivery_id), policy=deps.webhook_policy
    )


@shared_task(
    name="conveyor.webhooks.sweep",
    queue="maintenance",
    bind=True,
    ignore_result=True,
    expires=30,
)
def sweep_deliveries(self) -> int:
    """Publish again deliveries that are overdue: lost messages, dead workers, far retries."""
    deps = deps_of(self)
    with deps.session_factory.begin() as session:
        republished = webhook_delivery.sweep(session, policy=deps.webhook_policy)
    if republished:
        log.info("webhooks.swept", republished=len(republished))
    return len(republished)
