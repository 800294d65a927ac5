"""Webhook subscriptions, callback secrets, the outbox rows events create, and the log.

Sending lives in `webhook_delivery`; the SSRF guard in `ssrf`.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models import (
    Job,
    WebhookAttempt,
    WebhookCallbackSecret,
    WebhookDelivery,
    WebhookEndpoint,
)
from models.ids import new_id
from services import quotas, ssrf
from services.after_commit import SendTask, defer
from services.errors import Conflict, FieldProblem, InvalidInput, NotFound
from services.event_types import TERMINAL_JOB_EVENTS
from services.job_view import job_json
from services.pagination import ByteBound, Page, newest_first
from services.webhook_policy import WebhookPolicy

DELIVER_TASK = "conveyor.webhooks.deliver"
WEBHOOKS_QUEUE = "webhooks"
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
SECRET_BYTES = 32
# Every job's end writes a delivery per subscribed endpoint in the transaction that ends
# it, and sends each: without a bound, one user's endpoints multiplied each job's work.
MAX_ENDPOINTS = 100
# The event types an endpoint may subscribe to.
EVENT_TYPES = tuple(sorted(str(t) for t in TERMINAL_JOB_EVENTS))


def new_secret() -> str:
    """A Standard Webhooks key: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


# --------------------------------------------------------------------------- endpoints


def create(
    session: Session,
    *,
    owner_id: uuid.UUID,
    url: str,
    event_types: Sequence[str],
    description: str | None,
    policy: WebhookPolicy,
    resolver: ssrf.Resolver | None = None,
) -> WebhookEndpoint:
    """Subscribe `url` to `event_types`, after the SSRF guard has accepted it; `Conflict`
    when the owner has MAX_ENDPOINTS already."""
    _check_url(url, policy, resolver)  # before the owner's row is locked: it resolves names
    quotas.check_room(
        session,
        owner_id=owner_id,
        counted=select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.owner_id == owner_id),
        limit=MAX_ENDPOINTS,
        refusal=f"at most {MAX_ENDPOINTS} webhook endpoints per user; delete one",
    )
    endpoint = WebhookEndpoint(
        owner_id=owner_id,
        url=url,
        event_types=list(dict.fromkeys(event_types)),
        description=description,
        secret=new_secret(),
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    session.refresh(endpoint)
    return endpoint


def get(session: Session, *, owner_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, endpoint_id, populate_existing=True)
    if endpoint is None or endpoint.owner_id != owner_id:
        raise NotFound("no webhook endpoint with this id")
    return endpoint


def list_page(
    session: Session, *, owner_id: uuid.UUID, limit: int, cursor: str | None
) -> Page[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner_id)
    return newest_first(session, query, WebhookEndpoint.id, limit=limit, cursor=cursor)


def update(
    session: Session,
    *,
    owner_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    fields: dict[str, Any],
    policy: WebhookPolicy,
    resolver: ssrf.Resolver | None = None,
) -> WebhookEndpoint:
    """Change the URL, event types, description, or enable or disable the endpoint.
    Enabling clears the reason it was disabled and its record of failures; a disabled
    endpoint's reason can be changed, and an enabled one has none to give (422: it was
    dropped without a word)."""
    endpoint = _lock(session, owner_id=owner_id, endpoint_id=endpoint_id)
    reason = fields.get("disabled_reason")
    if reason is not None and fields.get("enabled", endpoint.enabled):
        raise InvalidInput(
            problems=[
                FieldProblem(
                    "disabled_reason", "only a disabled endpoint has one: give enabled: false"
                )
            ]
        )
    if "url" in fields:
        _check_url(fields["url"], policy, resolver)
        endpoint.url = fields["url"]
    if "event_types" in fields:
        endpoint.event_types = list(dict.fromkeys(fields["event_types"]))
    if "description" in fields:
        endpoint.description = fields["description"]
    enabled = fields.get("enabled")
    if enabled is True and not endpoint.enabled:
        endpoint.enabled = True
        endpoint.disabled_reason = endpoint.disabled_at = endpoint.failing_since = None
    elif enabled is False and endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason = reason or "disabled by its owner"
        endpoint.disabled_at = func.now()
    elif reason is not None:  # disabled already: a new reason, the same time
        endpoint.disabled_reason = reason
    session.flush()
    session.refresh(endpoint)
    return endpoint


def delete(session: Session, *, owner_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Remove the endpoint with its deliveries and their log."""
    session.delete(_lock(session, owner_id=owner_id, endpoint_id=endpoint_id))
    session.flush()


def rotate_secret(
    session: Session, *, owner_id: uuid.UUID, endpoint_id: uuid.UUID, policy: WebhookPolicy
) -> WebhookEndpoint:
    """A new key signs from now on; the current one keeps signing beside it for
    `policy.secret_overlap_s`, so receivers can switch keys without missing a delivery."""
    endpoint = _lock(session, owner_id=owner_id, endpoint_id=endpoint_id)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = func.now() + dt.timedelta(seconds=policy.secret_overlap_s)
    endpoint.secret = new_secret()
    session.flush()
    session.refresh(endpoint)
    return endpoint


def signing_secrets(endpoint: WebhookEndpoint) -> tuple[str, ...]:
    """The keys that sign the endpoint's deliveries now: the current one, and the previous
    one while its overlap lasts."""
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > dt.datetime.now(dt.UTC):
        return (endpoint.secret, endpoint.previous_secret)
    return (endpoint.secret,)


def callback_secret(session: Session, *, owner_id: uuid.UUID) -> str:
    """The owner's key for jobs' own `webhook_url` deliveries, made on first use."""
    session.execute(
        insert(WebhookCallbackSecret)
        .values(owner_id=owner_id, secret=new_secret())
        .on_conflict_do_nothing(index_elements=["owner_id"])
    )
    secret = session.scalar(
        select(WebhookCallbackSecret.secret).where(WebhookCallbackSecret.owner_id == owner_id)
    )
    assert secret is not None
    return secret


def _check_url(url: str, policy: WebhookPolicy, resolver: ssrf.Resolver | None) -> None:
    try:
        if resolver is None:
            ssrf.check(url, allowed=policy.allowed_networks)
        else:
            ssrf.check(url, allowed=policy.allowed_networks, resolver=resolver)
    except ssrf.UnsafeUrl as refused:
        raise InvalidInput(problems=[FieldProblem("url", str(refused))]) from None


def _lock(session: Session, *, owner_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.owner_id == owner_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if endpoint is None:
        raise NotFound("no webhook endpoint with this id")
    return endpoint


# --------------------------------------------------------------------------- the outbox


def subscribers(owner_id: ColumnElement[Any], event_type: ColumnElement[Any]) -> Any:
    """The ids of the owner's enabled endpoints subscribed to `event_type` (a one-element
    text array), as an SQL array, NULL for none: a subquery for the statement that ends
    jobs to return beside each job, so that `job_ended` need not ask again."""
    return (
        select(func.array_agg(WebhookEndpoint.id))
        .where(
            WebhookEndpoint.owner_id == owner_id,
            WebhookEndpoint.enabled.is_(True),
            WebhookEndpoint.event_types.contains(event_type),
        )
        .scalar_subquery()
    )


@dataclass(frozen=True)
class Told:
    """Who hears of a job's end: its owner's subscribed endpoints, and its own webhook_url."""

    endpoint_ids: Sequence[uuid.UUID]
    webhook_url: str | None


# Built once: a statement built per call cost more than its round trip. Only for callers
# whose statement did not return `Told` already.
_WHO_IS_TOLD = select(
    subscribers(bindparam("owner_id"), bindparam("event_type")),
    select(Job.webhook_url).where(Job.id == bindparam("job_id")).scalar_subquery(),
)


def job_ended(
    session: Session,
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    event_type: str,
    told: Told | None = None,
) -> list[uuid.UUID]:
    """Write the deliveries of a job's terminal event, in the transaction that records it:
    one per enabled endpoint subscribed to the type, and one to the job's `webhook_url`.
    `told`: who, when the caller's statement returned it already (job_transitions does)."""
    if told is None:  # most jobs have nobody to tell: one round trip reads who
        endpoint_ids, webhook_url = session.execute(
            _WHO_IS_TOLD,
            {"owner_id": owner_id, "job_id": job_id, "event_type": [str(event_type)]},
        ).one()
        told = Told(endpoint_ids or [], webhook_url)
    endpoint_ids = _still_there(session, told.endpoint_ids) if told.endpoint_ids else []
    targets: list[dict[str, Any]] = [{"endpoint_id": e, "url": None} for e in endpoint_ids]
    if told.webhook_url:
        targets.append({"endpoint_id": None, "url": told.webhook_url})
    if not targets:
        return []
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    happened_at = job.finished_at or job.updated_at
    payload = {
        "type": str(event_type),
        "timestamp": happened_at,
        "data": job_json(job),
    }
    # One message per event: every receiver sees the same `webhook-id`, on every attempt.
    message_id = f"msg_{new_id().hex}"
    plain = orjson.loads(orjson.dumps(payload, option=orjson.OPT_UTC_Z))
    delivery_ids = list(
        session.scalars(
            insert(WebhookDelivery).returning(WebhookDelivery.id),
            [
                {
                    "id": new_id(),
                    "owner_id": owner_id,
                    "job_id": job_id,
                    "event_type": str(event_type),
                    "message_id": message_id,
                    "payload": plain,
                    **target,
                }
                for target in targets
            ],
        )
    )
    for delivery_id in delivery_ids:
        publish(session, delivery_id)
    return delivery_ids


def _still_there(session: Session, endpoint_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The endpoints not deleted meanwhile, share-locked until the commit (FOR KEY SHARE,
    which an endpoint's change does not wait for, but its deletion does). One deleted
    between the read of who is told and the insert of the deliveries broke their foreign
    key, and with it the job's end: a cancel answered 500, and a worker's finished job
    stayed `running` until its lease lapsed and the job ran again. A deletion under way
    is waited for, and then the endpoint is left out."""
    return list(
        session.scalars(
            select(WebhookEndpoint.id)
            .where(WebhookEndpoint.id.in_(endpoint_ids))
            .order_by(WebhookEndpoint.id)  # one order of locks for every transaction
            .with_for_update(read=True, key_share=True)
        )
    )


def publish(session: Session, delivery_id: uuid.UUID, *, countdown_s: float = 0) -> None:
    """Ask a worker to attempt the delivery, after commit."""
    options = {"countdown": round(countdown_s, 3)} if countdown_s > 0 else {}
    defer(session, SendTask(DELIVER_TASK, WEBHOOKS_QUEUE, (str(delivery_id),), options))


# --------------------------------------------------------------------------- the log


_OWNED_JOB = select(Job.id).where(Job.id == bindparam("id"), Job.owner_id == bindparam("owner"))


def deliveries_page(
    session: Session,
    *,
    owner_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    max_bytes: int,
    endpoint_id: uuid.UUID | None = None,
    job_id: uuid.UUID | None = None,
) -> Page[WebhookDelivery]:
    """The owner's deliveries, newest first, by endpoint or job: 404 for an endpoint or a
    job that is not the owner's, the one as the other (a job's answered an empty page).
    A page ends early after the delivery whose payload (a job's output) reaches
    `max_bytes`."""
    if endpoint_id is not None:
        get(session, owner_id=owner_id, endpoint_id=endpoint_id)
    if job_id is not None and session.scalar(_OWNED_JOB, {"id": job_id, "owner": owner_id}) is None:
        raise NotFound("no job with this id")
    where = [WebhookDelivery.owner_id == owner_id]
    if endpoint_id is not None:
        where.append(WebhookDelivery.endpoint_id == endpoint_id)
    if job_id is not None:
        where.append(WebhookDelivery.job_id == job_id)
    bound = ByteBound(WebhookDelivery, [WebhookDelivery.payload], max_bytes)
    query = select(WebhookDelivery).where(*where)
    return newest_first(
        session, query, WebhookDelivery.id, limit=limit, cursor=cursor, bounded=bound
    )


def get_delivery(
    session: Session, *, owner_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None or delivery.owner_id != owner_id:
        raise NotFound("no delivery with this id")
    return delivery


def attempts_of(
    session: Session, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[WebhookAttempt]]:
    """Each delivery's attempts, oldest first."""
    found: dict[uuid.UUID, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        rows = session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.id)
        )
        for row in rows:
            found[row.delivery_id].append(row)
    return found


def redeliver(session: Session, *, owner_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
    """Send the message again, with the same `webhook-id`, on a fresh retry schedule.
    The log keeps every earlier attempt."""
    delivery = session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.owner_id == owner_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if delivery is None:
        raise NotFound("no delivery with this id")
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is not None and not endpoint.enabled:
            raise Conflict(
                "the endpoint is disabled; enable it first",
                extra={"disabled_reason": endpoint.disabled_reason},
            )
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = func.statement_timestamp()
    session.flush()
    session.refresh(delivery)
    publish(session, delivery.id)
    return delivery
