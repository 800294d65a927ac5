"""Fields that the server owns (`owner_id`, `status`, `role`, `version`, `attempt`, ...)
are refused in every request body with a 422, and nothing is written.

`BODIES` holds a valid body for every operation that takes one, read from the OpenAPI
document; an operation that takes a body and has no entry here fails the test."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.helpers import PASSWORD, AuthClient
from tests.security.support import RECEIVER, send
from tests.security.test_isolation import World, fingerprint

FORBIDDEN = {
    "owner_id": str(uuid.uuid4()),
    "status": "succeeded",
    "role": "admin",
    "version": 99,
    "attempt": 7,
    "id": str(uuid.uuid4()),
    "created_at": "2020-01-01T00:00:00Z",
}

Body = Callable[[World], dict[str, Any]]
BODIES: dict[tuple[str, str], Body] = {
    ("POST", "/v1/auth/register"): lambda _: {"email": "x@example.com", "password": PASSWORD},
    ("POST", "/v1/auth/login"): lambda _: {"email": "x@example.com", "password": PASSWORD},
    ("POST", "/v1/auth/logout"): lambda _: {},
    ("POST", "/v1/api-keys"): lambda _: {"name": "k"},
    ("POST", "/v1/agents"): lambda _: {"name": "a", "provider": "echo"},
    ("PATCH", "/v1/agents/{agent_id}"): lambda _: {"name": "b"},
    ("POST", "/v1/jobs"): lambda w: {"agent_id": w.ids["agent_id"], "input": {"text": "x"}},
    ("POST", "/v1/documents"): lambda _: {"title": "t", "content": "c"},
    ("PUT", "/v1/documents/{document_id}"): lambda _: {"title": "t", "content": "c"},
    ("PATCH", "/v1/documents/{document_id}"): lambda _: {"title": "t2"},
    ("POST", "/v1/streams/{stream}/events"): lambda _: {"events": [{"type": "t", "data": {}}]},
    ("POST", "/v1/events/batch"): lambda _: {"events": [{"stream": "s", "type": "t", "data": {}}]},
    ("POST", "/v1/webhooks"): lambda _: {"url": RECEIVER, "event_types": ["job.succeeded"]},
    ("PATCH", "/v1/webhooks/{endpoint_id}"): lambda _: {"description": "d"},
}


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})


@pytest.fixture
def mine(alice: AuthClient) -> World:
    agent = alice.create_agent()
    document = alice.post("/v1/documents", json={"title": "t", "content": "c"}).json
    endpoint = alice.post("/v1/webhooks", json={"url": RECEIVER, "event_types": ["job.failed"]})
    assert endpoint.status_code == 201
    user_id = str(alice.get("/v1/auth/me").json["id"])
    return World(
        ids={
            "agent_id": agent["id"],
            "document_id": document["id"],
            "endpoint_id": endpoint.json["id"],
            "stream": "mine",
        },
        user_id=user_id,
    )


def _operations_with_bodies(client: Any) -> set[tuple[str, str]]:
    spec = client.get("/openapi.json").json
    return {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation or (method, path) == ("post", "/v1/auth/logout")
    }


def test_every_operation_with_a_body_is_listed(client):
    operations = _operations_with_bodies(client)
    assert sorted(operations - BODIES.keys()) == [], "add a valid body to BODIES"
    assert sorted(BODIES.keys() - operations) == [], "BODIES lists operations that are gone"


@pytest.mark.parametrize("field", sorted(FORBIDDEN))
def test_server_owned_fields_are_422(alice, mine, session: Session, field):
    for (method, path), make in sorted(BODIES.items()):
        url = path.format(**mine.ids)
        valid = make(mine)
        before = fingerprint(session, mine.user_id)
        response = send(
            alice.client, method, url, alice.headers, {**valid, field: FORBIDDEN[field]}
        )
        assert response.status_code == 422, (method, path, field, response.json)
        assert response.json["type"] == "/problems/validation-error"
        assert any(field in e["field"] for e in response.json["errors"]), response.json
        assert fingerprint(session, mine.user_id) == before, (method, path, field)


def test_the_valid_bodies_are_valid(alice, mine):
    """The control: without the extra field, each body is accepted (or refused for reasons
    that are not about its fields)."""
    logout = ("POST", "/v1/auth/logout")  # last: it revokes the token the others use
    for method, path in [*sorted(BODIES.keys() - {logout}), logout]:
        body = BODIES[(method, path)](mine)
        response = send(alice.client, method, path.format(**mine.ids), alice.headers, body)
        if path == "/v1/auth/login":  # no such account: the body was read and judged
            assert response.status_code == 401, response.json
        else:
            assert response.status_code in (200, 201, 202, 204), (method, path, response.json)
