"""Every error is a problem document; nothing internal reaches the client."""

import uuid

import pytest

PROBLEM = "application/problem+json"


def assert_problem(response, status):
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    body = response.json
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert body["title"] and body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def test_unknown_url_is_404(client):
    assert_problem(client.get("/nothing-here"), 404)


def test_wrong_method_is_405(client):
    body = assert_problem(client.delete("/healthz"), 405)
    assert "method" in body["detail"]


def test_malformed_json_is_400(alice):
    response = alice.post(
        "/v1/agents", data=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "JSON" in body["detail"]


def test_non_json_body_is_415(alice):
    response = alice.post("/v1/agents", data=b"name=x", content_type="text/plain")
    assert_problem(response, 415)


def test_too_large_body_is_413(alice, app):
    limit = app.extensions["conveyor"].settings.max_body_bytes
    payload = b'{"name": "' + b"x" * limit + b'"}'
    response = alice.post("/v1/agents", data=payload, content_type="application/json")
    assert_problem(response, 413)


def test_validation_lists_each_field(alice):
    response = alice.post("/v1/agents", json={"name": "", "provider": "nope", "extra": 1})
    body = assert_problem(response, 422)
    fields = {error["field"] for error in body["errors"]}
    assert {"name", "provider", "extra"} <= fields
    assert all(error["location"] == "body" for error in body["errors"])


def test_query_validation_is_422(alice):
    body = assert_problem(alice.get("/v1/jobs?limit=100000"), 422)
    assert body["errors"][0]["location"] == "query"


def test_bad_cursor_is_422(alice):
    body = assert_problem(alice.get("/v1/jobs?cursor=not-a-cursor"), 422)
    assert body["errors"][0]["field"] == "cursor"


def test_unexpected_error_is_500_without_internals(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail: password=hunter2")

    response = client.get("/boom")
    body = assert_problem(response, 500)
    assert "hunter2" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert body["title"] == "Internal server error"


@pytest.mark.parametrize("incoming", ["abc-123", "req.1:2_3"])
def test_request_id_is_echoed(client, incoming):
    response = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming


def test_request_id_is_generated_when_missing_or_unsafe(client):
    first = client.get("/healthz").headers["X-Request-ID"]
    unsafe = client.get("/healthz", headers={"X-Request-ID": "bad id <script>" + "x" * 200})
    assert len(first) == 32 and uuid.UUID(hex=first)
    assert uuid.UUID(hex=unsafe.headers["X-Request-ID"])
