"""Bodies on routes that take none, and MAX_BODY_BYTES on every route.

A route without a body schema never read its body: a 3 MB body or `not json at all` sent
to `POST /v1/webhooks/<id>/rotate-secret` rotated the secret (200). Now a body past the
limit is 413 on every route, and a route that takes no body accepts nothing or `{}` only:
not JSON is 400, other JSON 422. A refused request changes nothing.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest

from api import request_context
from tests.api.test_problems import assert_problem
from tests.helpers import AuthClient

RECEIVER = "http://127.0.0.1:9/hook"  # registration only: nothing is sent
JSON = "application/json"


@pytest.fixture
def settings(settings):
    return settings.model_copy(
        update={"webhook_allowed_networks": ["127.0.0.0/8"], "max_body_bytes": 4096}
    )


@pytest.fixture
def endpoint(alice: AuthClient) -> dict[str, Any]:
    body = {"url": RECEIVER, "event_types": ["job.succeeded"]}
    response = alice.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.json
    return dict(response.json)


def _too_large(app: Any) -> bytes:
    limit = app.extensions["conveyor"].settings.max_body_bytes
    return b'{"pad": "' + b"x" * limit + b'"}'


def _chunked(user: AuthClient, url: str, body: bytes) -> Any:
    return user.post(
        url,
        input_stream=io.BytesIO(body),
        content_type=JSON,
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def _unrotated(alice: AuthClient, endpoint: dict[str, Any]) -> bool:
    shown = alice.get(f"/v1/webhooks/{endpoint['id']}").json
    return shown["previous_secret_expires_at"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("too large", 413),
        (b"not json at all", 400),
        (b'{"refresh_token": "x"}', 422),
        (b"[]", 422),
        (b"null", 422),
    ],
)
def test_a_body_on_rotate_secret_is_refused_and_rotates_nothing(alice, app, endpoint, body, status):
    data = _too_large(app) if body == "too large" else body
    url = f"/v1/webhooks/{endpoint['id']}/rotate-secret"
    problem = assert_problem(alice.post(url, data=data, content_type=JSON), status)
    if status == 422:
        assert problem["errors"] == [
            {"location": "body", "field": "body", "detail": request_context.NO_BODY_DETAIL}
        ]
    assert _unrotated(alice, endpoint)


def test_a_chunked_body_past_the_limit_on_rotate_secret_is_413(alice, app, endpoint):
    url = f"/v1/webhooks/{endpoint['id']}/rotate-secret"
    assert_problem(_chunked(alice, url, b"{}" + b" " * len(_too_large(app))), 413)
    assert _unrotated(alice, endpoint)


@pytest.mark.parametrize("body", [None, b"", b"{}", b" { }\n"])
def test_rotate_secret_takes_no_body_or_an_empty_object(alice, endpoint, body):
    url = f"/v1/webhooks/{endpoint['id']}/rotate-secret"
    kwargs = {} if body is None else {"data": body, "content_type": JSON}
    response = alice.post(url, **kwargs)
    assert response.status_code == 200, response.json
    assert response.json["previous_secret_expires_at"] is not None


def test_an_empty_chunked_body_is_no_body(alice, endpoint):
    response = _chunked(alice, f"/v1/webhooks/{endpoint['id']}/rotate-secret", b"")
    assert response.status_code == 200, response.json


def test_a_body_on_cancel_is_refused_and_the_job_stays_queued(alice):
    job = alice.submit(alice.create_agent()["id"])
    url = f"/v1/jobs/{job['id']}/cancel"
    assert_problem(alice.post(url, data=b"not json at all", content_type=JSON), 400)
    assert_problem(alice.post(url, json={"reason": "no"}), 422)
    assert alice.get(f"/v1/jobs/{job['id']}").json["status"] == "queued"
    assert alice.post(url, json={}).json["status"] == "cancelled"


# Every POST route that takes no body, with ids nobody has: the body is refused before the
# route looks for anything.
BODYLESS = [
    "/v1/jobs/{id}/cancel",
    "/v1/jobs/{id}/retry",
    "/v1/webhooks/{id}/rotate-secret",
    "/v1/deliveries/{id}/redeliver",
    "/v1/auth/refresh",
]


@pytest.mark.parametrize("url", BODYLESS)
def test_every_route_without_a_body_refuses_one(alice, app, url):
    url = url.format(id=uuid.uuid4())
    assert_problem(alice.post(url, data=_too_large(app), content_type=JSON), 413)
    assert_problem(alice.post(url, data=b"not json at all", content_type=JSON), 400)
    assert_problem(alice.post(url, json={"a": 1}), 422)
    assert_problem(alice.post(url, data=b"a=1", content_type="text/plain"), 415)


def test_the_routes_without_a_body_are_the_ones_expected(app):
    """A new POST/PUT/PATCH route without `@bp.input` lands here: decide whether it takes
    a body (`takes_optional_body`) or none."""
    without = app.extensions["conveyor.endpoints_without_body"]
    assert without == {
        "jobs.cancel_job",
        "jobs.retry_job",
        "webhooks.rotate_secret",
        "deliveries.redeliver",
        "auth.refresh",
    }


def test_logout_refuses_a_body_past_the_limit_or_not_json_and_revokes_nothing(alice, app):
    too_large = b'{"refresh_token": "' + b"x" * len(_too_large(app)) + b'"}'
    assert_problem(alice.post("/v1/auth/logout", data=too_large, content_type=JSON), 413)
    assert_problem(alice.post("/v1/auth/logout", data=b"not json", content_type=JSON), 400)
    assert alice.get("/v1/auth/me").status_code == 200
    assert alice.post("/v1/auth/logout", json={}).status_code == 204
    assert alice.get("/v1/auth/me").status_code == 401


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/v1/auth/me"), ("DELETE", "/v1/agents/{agent}"), ("GET", "/healthz")],
)
def test_a_body_past_the_limit_is_413_on_any_method(alice, app, method, url):
    agent = alice.create_agent()
    url = url.format(agent=agent["id"])
    response = alice.client.open(
        url, method=method, data=_too_large(app), content_type=JSON, headers=alice.headers
    )
    assert_problem(response, 413)
    assert alice.get(f"/v1/agents/{agent['id']}").status_code == 200
