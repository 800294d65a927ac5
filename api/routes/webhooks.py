"""Webhook endpoints, the delivery log, redelivery, and the callback secret."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint

from api.auth import current_principal, require_access_token
from api.idempotent import refuses_key
from api.openapi import declares
from api.preconditions import check_on_create, check_without_etag
from api.representations import NO_STORE
from api.request_context import db
from api.runtime import current_runtime, page_max_bytes
from api.schemas.common import PageOut, PageQuery
from api.schemas.webhooks import (
    DeliveryOut,
    DeliveryQuery,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    EndpointWithSecretOut,
    SecretOut,
)
from api.spec_parts import CREATE_CONDITIONS, UNVERSIONED_CONDITIONS
from models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from services import webhooks
from services.pagination import Page
from services.webhook_policy import WebhookPolicy

bp = APIBlueprint("webhooks", __name__, url_prefix="/v1/webhooks", tag="Webhooks")
bp.before_request(require_access_token)
deliveries_bp = APIBlueprint("deliveries", __name__, url_prefix="/v1/deliveries", tag="Webhooks")
deliveries_bp.before_request(require_access_token)


def _policy() -> WebhookPolicy:
    return current_runtime().webhook_policy


def endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "description": endpoint.description,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "failing_since": endpoint.failing_since,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def _with_secret(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {**endpoint_json(endpoint), "secret": endpoint.secret}


def attempt_json(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempted_at": attempt.attempted_at,
        "status_code": attempt.status_code,
        "duration_ms": attempt.duration_ms,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
    }


def delivery_json(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "job_id": delivery.job_id,
        "url": delivery.url,
        "event_type": delivery.event_type,
        "message_id": delivery.message_id,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "last_attempt_at": delivery.last_attempt_at,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "payload": delivery.payload,
        "attempts": [attempt_json(a) for a in attempts],
        "created_at": delivery.created_at,
        "updated_at": delivery.updated_at,
    }


def _deliveries_page(page: Page[WebhookDelivery]) -> dict[str, Any]:
    attempts = webhooks.attempts_of(db(), [d.id for d in page.items])
    return {
        "items": [delivery_json(d, attempts[d.id]) for d in page.items],
        "next_cursor": page.next_cursor,
    }


# --------------------------------------------------------------------------- endpoints


@bp.post("")
@bp.input(EndpointIn, arg_name="body")
@refuses_key
@bp.output(EndpointWithSecretOut, status_code=201)
@bp.doc(
    summary="Subscribe a URL to event types; the answer carries its signing secret",
    description=f"At most {webhooks.MAX_ENDPOINTS} endpoints per user (409 past that).",
    responses=[201, 409, 412, 422],
)
@declares(headers={201: ["Location"]}, request_headers=CREATE_CONDITIONS)
def create_endpoint(body: EndpointIn):  # type: ignore[no-untyped-def]
    check_on_create("/v1/webhooks", "an endpoint")
    endpoint = webhooks.create(
        db(),
        owner_id=current_principal().user_id,
        url=body.url,
        event_types=body.event_types,
        description=body.description,
        policy=_policy(),
    )
    return _with_secret(endpoint), 201, {"Location": f"/v1/webhooks/{endpoint.id}", **NO_STORE}


@bp.get("")
@bp.input(PageQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(summary="The caller's webhook endpoints, newest first")
def list_endpoints(query: PageQuery):  # type: ignore[no-untyped-def]
    page = webhooks.list_page(
        db(), owner_id=current_principal().user_id, limit=query.limit, cursor=query.cursor
    )
    return {"items": [endpoint_json(e) for e in page.items], "next_cursor": page.next_cursor}


@bp.get("/callback-secret")
@bp.output(SecretOut)
@bp.doc(summary="The secret that signs deliveries to jobs' own webhook_url")
def get_callback_secret():  # type: ignore[no-untyped-def]
    secret = webhooks.callback_secret(db(), owner_id=current_principal().user_id)
    return {"secret": secret}, 200, NO_STORE


@bp.get("/<uuid:endpoint_id>")
@bp.output(EndpointOut)
@bp.doc(summary="One webhook endpoint", responses=[200, 404])
def get_endpoint(endpoint_id: uuid.UUID):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id
    return endpoint_json(webhooks.get(db(), owner_id=owner_id, endpoint_id=endpoint_id))


@bp.patch("/<uuid:endpoint_id>")
@bp.input(EndpointPatch, arg_name="body")
@bp.output(EndpointOut)
@bp.doc(
    summary="Change an endpoint; `enabled` disables it or enables it again",
    responses=[200, 404, 412, 422],
)
@declares(request_headers=UNVERSIONED_CONDITIONS)
def update_endpoint(endpoint_id: uuid.UUID, body: EndpointPatch):  # type: ignore[no-untyped-def]
    endpoint = webhooks.update(
        db(),
        owner_id=current_principal().user_id,
        endpoint_id=endpoint_id,
        fields=body.model_dump(exclude_unset=True),
        policy=_policy(),
    )
    check_without_etag()
    return endpoint_json(endpoint)


@bp.delete("/<uuid:endpoint_id>")
@bp.doc(
    summary="Delete an endpoint with its deliveries",
    responses=[204, 404, 412],
)
@declares(request_headers=UNVERSIONED_CONDITIONS)
def delete_endpoint(endpoint_id: uuid.UUID):  # type: ignore[no-untyped-def]
    webhooks.delete(db(), owner_id=current_principal().user_id, endpoint_id=endpoint_id)
    check_without_etag()
    return "", 204


@bp.post("/<uuid:endpoint_id>/rotate-secret")
@bp.output(EndpointWithSecretOut)
@bp.doc(
    summary="A new signing secret; the previous one keeps signing beside it for a while",
    responses=[200, 404],
)
def rotate_secret(endpoint_id: uuid.UUID):  # type: ignore[no-untyped-def]
    endpoint = webhooks.rotate_secret(
        db(), owner_id=current_principal().user_id, endpoint_id=endpoint_id, policy=_policy()
    )
    return _with_secret(endpoint), 200, NO_STORE


@bp.get("/<uuid:endpoint_id>/deliveries")
@bp.input(PageQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(summary="The endpoint's deliveries, newest first, with every attempt", responses=[404])
def endpoint_deliveries(endpoint_id: uuid.UUID, query: PageQuery):  # type: ignore[no-untyped-def]
    page = webhooks.deliveries_page(
        db(),
        owner_id=current_principal().user_id,
        limit=query.limit,
        cursor=query.cursor,
        max_bytes=page_max_bytes(),
        endpoint_id=endpoint_id,
    )
    return _deliveries_page(page)


# --------------------------------------------------------------------------- deliveries


@deliveries_bp.get("")
@deliveries_bp.input(DeliveryQuery, location="query", arg_name="query")
@deliveries_bp.output(PageOut)
@deliveries_bp.doc(
    summary="The caller's deliveries, newest first, by job or endpoint",
    description="Deliveries to a job's own `webhook_url` are found here with `job_id`.",
    responses=[404],
)
def list_deliveries(query: DeliveryQuery):  # type: ignore[no-untyped-def]
    page = webhooks.deliveries_page(
        db(),
        owner_id=current_principal().user_id,
        limit=query.limit,
        cursor=query.cursor,
        max_bytes=page_max_bytes(),
        endpoint_id=query.endpoint_id,
        job_id=query.job_id,
    )
    return _deliveries_page(page)


@deliveries_bp.get("/<uuid:delivery_id>")
@deliveries_bp.output(DeliveryOut)
@deliveries_bp.doc(summary="One delivery with every attempt", responses=[200, 404])
def get_delivery(delivery_id: uuid.UUID):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id
    delivery = webhooks.get_delivery(db(), owner_id=owner_id, delivery_id=delivery_id)
    return delivery_json(delivery, webhooks.attempts_of(db(), [delivery.id])[delivery.id])


@deliveries_bp.post("/<uuid:delivery_id>/redeliver")
@deliveries_bp.output(DeliveryOut, status_code=202)
@deliveries_bp.doc(
    summary="Send a delivery again, same webhook-id, on a fresh retry schedule",
    responses=[202, 404, 409],
)
@declares(headers={202: ["Location"]})
def redeliver(delivery_id: uuid.UUID):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id
    delivery = webhooks.redeliver(db(), owner_id=owner_id, delivery_id=delivery_id)
    attempts = webhooks.attempts_of(db(), [delivery.id])[delivery.id]
    return delivery_json(delivery, attempts), 202, {"Location": f"/v1/deliveries/{delivery.id}"}
