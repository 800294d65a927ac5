"""Delivering outbox rows: claim, sign, send with no transaction open, record, reschedule.

A delivery is claimed by moving its `next_attempt_at` to the end of a lease. A worker that
dies while sending leaves the row to fall due again when the lease ends, and the sweeper
publishes it anew; the attempt number and the lease fence a late result of the old worker.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from services import metrics, ssrf, webhook_http, webhooks
from services.webhook_http import Answer
from services.webhook_policy import WebhookPolicy

log = structlog.get_logger(__name__)

SWEEP_BATCH = 500
UNFINISHED = ("pending", "failed")
Sender = Callable[..., Answer]
T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    """What a worker needs for one attempt of a delivery."""

    delivery_id: uuid.UUID
    attempt: int
    lease_until: dt.datetime
    url: str
    message_id: str
    payload: dict[str, Any]
    secrets: tuple[str, ...]


def deliver(
    session_factory: sessionmaker[Session],
    delivery_id: uuid.UUID,
    *,
    policy: WebhookPolicy,
    resolver: ssrf.Resolver | None = None,
) -> str | None:
    """Make one attempt if the delivery is due; the status it was left in, or None."""
    claim = _reconnecting(
        session_factory, lambda session, _: claim_due(session, delivery_id, policy=policy)
    )
    if claim is None:
        return None
    attempted_at = dt.datetime.now(dt.UTC)
    answer = attempt(claim, policy=policy, resolver=resolver)

    def record_once(session: Session, again: bool) -> str:
        if again and (done := recorded_status(session, claim.delivery_id, attempted_at)):
            return done  # the COMMIT lost with the connection had committed
        return record(session, claim, answer, attempted_at=attempted_at, policy=policy)

    status = _reconnecting(session_factory, record_once)
    metrics.count(metrics.WEBHOOK_DELIVERIES, outcome=status)
    log.info(
        "webhook.attempted",
        delivery_id=str(delivery_id),
        attempt=claim.attempt,
        status_code=answer.status_code,
        error=answer.error,
        outcome=status,
    )
    return status


def _reconnecting(session_factory: sessionmaker[Session], work: Callable[[Session, bool], T]) -> T:
    """`work` in a transaction; once more, in a new one, when the pooled connection turned
    out dead (the worker's engine does not ping on checkout: models.db.make_engine). After a
    PostgreSQL restart during an attempt, the result's record met such a connection, so an
    answered 200 went unrecorded and the message was sent again when the lease ran out.
    `work` is told whether it is the second try."""
    try:
        with session_factory.begin() as session:
            return work(session, False)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.info("db.reconnected", error=type(error.orig).__name__)
    with session_factory.begin() as session:
        return work(session, True)


def recorded_status(
    session: Session, delivery_id: uuid.UUID, attempted_at: dt.datetime
) -> str | None:
    """The delivery's status if its attempt made at `attempted_at` is in its log already
    (a record whose COMMIT landed although its connection died), else None."""
    return session.scalar(
        select(WebhookDelivery.status)
        .join(WebhookAttempt, WebhookAttempt.delivery_id == WebhookDelivery.id)
        .where(WebhookDelivery.id == delivery_id, WebhookAttempt.attempted_at == attempted_at)
    )


def claim_due(session: Session, delivery_id: uuid.UUID, *, policy: WebhookPolicy) -> Claim | None:
    """Take a due delivery for one attempt; None when it is not due or someone holds it.
    A delivery whose endpoint has been disabled ends `dead` here, unsent."""
    found = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status.in_(UNFINISHED),
            WebhookDelivery.next_attempt_at <= func.statement_timestamp(),
        )
        .with_for_update(of=WebhookDelivery, skip_locked=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if found is None:
        return None
    delivery, endpoint = found
    if endpoint is not None and not endpoint.enabled:
        delivery.status = "dead"
        delivery.next_attempt_at = None
        delivery.last_error = f"not sent: the endpoint is disabled ({endpoint.disabled_reason})"
        return None
    if delivery.attempts >= policy.max_attempts:
        # Every attempt the schedule allows was claimed, and the last one recorded no
        # outcome (its worker died, or it failed unexpectedly): give up, as `record` would
        # have, rather than send it again every lease for ever.
        delivery.status = "dead"
        delivery.next_attempt_at = None
        delivery.last_error = (
            f"gave up after {delivery.attempts} attempts; the last one ended without an outcome"
        )
        return None
    lease_until = session.scalar(
        select(func.statement_timestamp() + dt.timedelta(seconds=policy.lease_s))
    )
    assert lease_until is not None
    delivery.attempts += 1
    delivery.next_attempt_at = lease_until
    session.flush()
    if endpoint is not None:
        url, keys = endpoint.url, webhooks.signing_secrets(endpoint)
    else:
        assert delivery.url is not None
        url = delivery.url
        keys = (webhooks.callback_secret(session, owner_id=delivery.owner_id),)
    return Claim(
        delivery.id,
        delivery.attempts,
        lease_until,
        url,
        delivery.message_id,
        delivery.payload,
        keys,
    )


def attempt(
    claim: Claim,
    *,
    policy: WebhookPolicy,
    resolver: ssrf.Resolver | None = None,
    sender: Sender = webhook_http.post,
) -> Answer:
    """Check the URL again, sign, and send. Runs with no database transaction open."""
    started = time.monotonic()
    try:
        kwargs = {"resolver": resolver} if resolver is not None else {}
        target = ssrf.check(claim.url, allowed=policy.allowed_networks, **kwargs)
    except ssrf.UnsafeUrl as refused:
        duration = round((time.monotonic() - started) * 1000)
        return Answer(None, duration, f"not sent: {refused}")
    body = encode_body(claim.payload)
    headers = sign(claim.message_id, body, claim.secrets)
    return sender(
        target,
        body,
        headers,
        timeout_s=policy.timeout_s,
        max_bytes=policy.max_response_bytes,
    )


def encode_body(payload: dict[str, Any]) -> bytes:
    """The body, with its keys in the order the spec shows them; the same bytes each time."""
    ordered = {
        "type": payload["type"],
        "timestamp": payload["timestamp"],
        "data": payload["data"],
    }
    return orjson.dumps(ordered)


def sign(message_id: str, body: bytes, secrets: tuple[str, ...]) -> dict[str, str]:
    """Standard Webhooks headers; one `v1,` signature per key, separated by spaces."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    text = body.decode()
    signatures = [Webhook(key).sign(message_id, now, text) for key in secrets]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def record(
    session: Session,
    claim: Claim,
    answer: Answer,
    *,
    attempted_at: dt.datetime,
    policy: WebhookPolicy,
) -> str:
    """Log the attempt and decide what follows: done, a retry, or giving up."""
    # The endpoint's row first (it may be updated below), then the delivery's: the order in
    # which deleting the endpoint takes them (the row, then its deliveries by the cascade).
    # The other order deadlocked with a deletion.
    session.execute(
        select(WebhookEndpoint.id)
        .join(WebhookDelivery, WebhookDelivery.endpoint_id == WebhookEndpoint.id)
        .where(WebhookDelivery.id == claim.delivery_id)
        .with_for_update(of=WebhookEndpoint, key_share=True)  # FOR NO KEY UPDATE
    )
    held = session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.id == claim.delivery_id).with_for_update()
    )
    if held is None:
        # Deleted with its endpoint while the attempt was in flight: nothing to log it
        # against (the attempt's row would break its foreign key), nothing left to decide.
        log.warning("webhook.result_fenced", delivery_id=str(claim.delivery_id), gone=True)
        return "fenced"
    session.add(
        WebhookAttempt(
            delivery_id=claim.delivery_id,
            attempted_at=attempted_at,
            status_code=answer.status_code,
            duration_ms=answer.duration_ms,
            error=answer.error,
            response_excerpt=answer.excerpt,
        )
    )
    delivery = session.scalar(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.id == claim.delivery_id,
            WebhookDelivery.status.in_(UNFINISHED),
            WebhookDelivery.attempts == claim.attempt,
            WebhookDelivery.next_attempt_at == claim.lease_until,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if delivery is None:
        # Redelivered, or taken over after the lease ran out: the newer attempt decides.
        log.warning("webhook.result_fenced", delivery_id=str(claim.delivery_id))
        return "fenced"
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery.endpoint_id else None
    delivery.last_attempt_at = attempted_at
    delivery.last_status_code = answer.status_code
    delivery.last_error = _error_of(answer)
    if answer.succeeded:
        delivery.status, delivery.next_attempt_at = "succeeded", None
        if endpoint is not None:
            endpoint.failing_since = None
        return delivery.status
    if answer.status_code == 410:
        delivery.status, delivery.next_attempt_at = "dead", None
        if endpoint is not None:
            _disable(endpoint, f"the endpoint answered 410 Gone at {_when(attempted_at)}")
        return delivery.status
    if endpoint is not None:
        endpoint.failing_since = endpoint.failing_since or attempted_at
        failing_for = (attempted_at - endpoint.failing_since).total_seconds()
        if failing_for >= policy.disable_after_s:
            delivery.status, delivery.next_attempt_at = "dead", None
            _disable(
                endpoint,
                f"every delivery has failed since {_when(endpoint.failing_since)}; "
                f"the last one: {delivery.last_error}",
            )
            return delivery.status
    delay = policy.retry_delay_s(delivery.attempts, retry_after_s=_retry_after(answer))
    if delay is None:
        delivery.status, delivery.next_attempt_at = "dead", None
        delivery.last_error = f"gave up after {delivery.attempts} attempts; {delivery.last_error}"
        return delivery.status
    delivery.status = "failed"
    delivery.next_attempt_at = func.statement_timestamp() + dt.timedelta(seconds=delay)
    if delay <= policy.countdown_up_to_s:
        webhooks.publish(session, delivery.id, countdown_s=delay)
    return delivery.status


def sweep(session: Session, *, policy: WebhookPolicy) -> list[uuid.UUID]:
    """Publish again deliveries that have been due for a while: their message was lost, or
    their worker died mid-attempt, or their retry was too far off to publish with a
    countdown. Marking them due from now means one message per row per period."""
    overdue = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status.in_(UNFINISHED),
            WebhookDelivery.next_attempt_at
            <= func.statement_timestamp() - dt.timedelta(seconds=policy.republish_after_s),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(SWEEP_BATCH)
        .with_for_update(skip_locked=True)
    )
    ids = list(
        session.scalars(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(overdue.scalar_subquery()))
            .values(next_attempt_at=func.statement_timestamp())
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)
        )
    )
    for delivery_id in ids:
        webhooks.publish(session, delivery_id)
    return ids


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.disabled_at = func.now()


def _error_of(answer: Answer) -> str | None:
    if answer.error is not None:
        return answer.error
    if answer.succeeded:
        return None
    code = answer.status_code
    if code is not None and 300 <= code < 400:
        return f"answered {code}: redirects are not followed"
    return f"answered {code}"


def _retry_after(answer: Answer) -> float | None:
    return answer.retry_after_s if answer.status_code in (429, 503) else None


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
