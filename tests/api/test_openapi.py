"""The OpenAPI document tells the truth: it is valid OpenAPI 3.1, and answers the server
really sends (found by hand against gunicorn and by schemathesis) conform to it.

`conforming` sends one request built from the document (schemathesis serializes it as a
client generated from the document would) and checks the answer's status, content type,
headers and body against the document. The fuzzing of every operation is
tests/security/test_schemathesis.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services import event_batches
from tests.helpers import AuthClient

PROBLEM = "application/problem+json"


def conforming(app: Any, method: str, path: str, **case: Any) -> Any:
    """The answer to the request `case` describes, validated against the document."""
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)[path][method]
    headers = case.pop("headers", {})
    # Parameters rendered as the document says (`style`, `explode`, `content`).
    for container, serialize in operation.get_parameter_serializers().items():
        if container in case:
            case[container] = serialize(case[container])
    built = operation.Case(**case)
    # Valid requests refused (registration turned off) or answered 503 (readiness) are the
    # point here: what is checked is that the document declares the answer.
    excluded = [positive_data_acceptance, not_a_server_error]
    return built.call_and_validate(headers=headers, excluded_checks=excluded)


@pytest.fixture
def spec(client) -> dict[str, Any]:
    return dict(client.get("/openapi.json").json)


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_the_document_is_valid_openapi_3_1(spec):
    """It was not: two blueprints share each of the tags 'Operations' and 'Webhooks', and
    APIFlask listed a tag per blueprint."""
    errors = [error.message for error in OpenAPIV31SpecValidator(spec).iter_errors()]
    assert errors == []
    names = [tag["name"] for tag in spec["tags"]]
    assert len(names) == len(set(names)) and {"Operations", "Webhooks"} <= set(names)


def test_register_when_turned_off_is_a_declared_403(app_with):
    app = app_with(registration_enabled=False)
    body = {"email": "off@example.com", "password": "p" * 12}
    response = conforming(app, "POST", "/v1/auth/register", body=body)
    assert response.status_code == 403


def test_readyz_503_is_declared_with_retry_after(app_with):
    app = app_with(redis_url="redis://127.0.0.1:1/0")
    response = conforming(app, "GET", "/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == ["5"]
    assert response.json()["type"] == "/problems/not-ready"


def test_metadata_filter_as_a_client_built_from_the_document_sends_it(app, alice):
    """The parameter was an object schema, so clients sent `?project=apollo`, which the
    server refuses: it reads JSON text, which `content: application/json` says."""
    for project in ("apollo", "gemini"):
        made = alice.post(
            "/v1/documents", json={"title": project, "content": "c", "metadata": {"p": project}}
        )
        assert made.status_code == 201
    response = conforming(
        app, "GET", "/v1/documents", query={"metadata": {"p": "apollo"}}, headers=alice.headers
    )
    assert response.status_code == 200, (response.request.url, response.json())
    assert [d["title"] for d in response.json()["items"]] == ["apollo"]


def test_metrics_are_declared_as_text(app):
    response = conforming(app, "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"][0].startswith("text/plain")


def test_logout_declares_its_optional_body_and_its_refusals(app, client, spec):
    operation = spec["paths"]["/v1/auth/logout"]["post"]
    assert operation["requestBody"]["required"] is False
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/LogoutIn"}
    assert "refresh_token" in spec["components"]["schemas"]["LogoutIn"]["properties"]
    assert {"400", "413", "415", "422"} <= operation["responses"].keys()
    for body in ({}, {"refresh_token": None}):
        user = AuthClient.register(client, f"out-{len(str(body))}@example.com")
        response = conforming(app, "POST", "/v1/auth/logout", body=body, headers=user.headers)
        assert response.status_code == 204


def test_routes_without_a_body_declare_that_they_refuse_one(spec):
    for path in ("/v1/jobs/{job_id}/cancel", "/v1/webhooks/{endpoint_id}/rotate-secret"):
        operation = spec["paths"][path]["post"]
        assert "requestBody" not in operation
        assert {"400", "413", "415", "422"} <= operation["responses"].keys(), path


def test_every_operation_declares_what_the_server_answers_any_request(spec):
    """413 (a body past MAX_BODY_BYTES, api/request_context.py), 414 and 431 (gunicorn's,
    problem documents since api/server_worker.py), and X-Request-ID on every answer."""
    for path, method, operation in _operations(spec):
        responses = operation["responses"]
        assert {"413", "414", "431"} <= responses.keys(), (method, path)
        for status, response in responses.items():
            resolved = _resolve(spec, response)
            assert "X-Request-ID" in resolved["headers"], (method, path, status)
            if status[0] in "45":
                assert list(resolved["content"]) == [PROBLEM], (method, path, status)
            if status == "401":
                header = _resolve(spec, resolved["headers"]["WWW-Authenticate"])
                assert header["required"] is True
            if status in ("429", "503"):
                assert _resolve(spec, resolved["headers"]["Retry-After"])["required"] is True


def _resolve(spec: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in item:
        return item
    node: Any = spec
    for part in item["$ref"].removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("post", "/v1/jobs", {"Idempotency-Key"}),
        ("patch", "/v1/agents/{agent_id}", {"If-Match", "If-None-Match"}),
        ("delete", "/v1/agents/{agent_id}", {"If-Match", "If-None-Match"}),
        ("patch", "/v1/webhooks/{endpoint_id}", {"If-Match", "If-None-Match"}),
        ("delete", "/v1/webhooks/{endpoint_id}", {"If-Match", "If-None-Match"}),
        ("delete", "/v1/api-keys/{key_id}", {"If-Match", "If-None-Match"}),
        ("put", "/v1/documents/{document_id}", {"If-Match", "If-None-Match"}),
        ("patch", "/v1/documents/{document_id}", {"If-Match", "If-None-Match"}),
        ("delete", "/v1/documents/{document_id}", {"If-Match", "If-None-Match"}),
        ("get", "/v1/documents/{document_id}", {"If-None-Match"}),
        ("get", "/v1/streams/{stream}", {"If-Match", "If-None-Match"}),
        ("get", "/v1/jobs/{job_id}/events", {"Last-Event-ID"}),
        ("get", "/v1/streams/{stream}/events", {"Last-Event-ID"}),
        ("get", "/v1/events", {"Last-Event-ID"}),
    ],
)
def test_request_headers_the_server_reads_are_declared(spec, method, path, headers):
    parameters = [_resolve(spec, p) for p in spec["paths"][path][method]["parameters"]]
    assert headers <= {p["name"] for p in parameters if p["in"] == "header"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("patch", "/v1/webhooks/{endpoint_id}"),
        ("delete", "/v1/webhooks/{endpoint_id}"),
        ("delete", "/v1/api-keys/{key_id}"),
    ],
)
def test_conditional_changes_without_an_etag_declare_their_412(app_with, alice, method, path):
    """Endpoints and API keys evaluate `If-Match` / `If-None-Match` (a tag never matches
    them): the 412 was answered but declared nowhere, nor were the two headers."""
    app = app_with(webhook_allowed_networks=["127.0.0.0/8"])
    user = AuthClient(app.test_client(), alice.email, alice.tokens)
    if path.startswith("/v1/webhooks"):
        made = user.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "event_types": ["job.failed"]}
        )
        parameters = {"endpoint_id": made.json["id"]}
    else:
        made = user.post("/v1/api-keys", json={"name": "k"})
        parameters = {"key_id": made.json["id"]}
    case: dict[str, Any] = {"path_parameters": parameters}
    if method == "patch":
        case["body"] = {"description": "d"}
    response = conforming(
        app, method.upper(), path, headers={**user.headers, "If-Match": '"1"'}, **case
    )
    assert response.status_code == 412


def test_one_api_key_is_declared_as_what_it_is(spec):
    """`GET /v1/api-keys/<id>` declared an empty schema."""
    declared = spec["paths"]["/v1/api-keys/{key_id}"]["get"]["responses"]["200"]
    schema = _resolve(spec, declared["content"]["application/json"]["schema"])
    assert {"id", "name", "prefix", "created_at", "last_used_at"} <= schema["properties"].keys()
    assert "key" not in schema["properties"]


@pytest.mark.parametrize(
    "path", ["/v1/jobs/{job_id}/events", "/v1/streams/{stream}/events", "/v1/events"]
)
def test_event_streams_are_declared(spec, path):
    content = spec["paths"][path]["get"]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= content.keys()


def test_a_job_event_stream_conforms(app, alice):
    job = alice.submit(alice.create_agent()["id"])
    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200  # the stream ends
    response = conforming(
        app,
        "GET",
        "/v1/jobs/{job_id}/events",
        path_parameters={"job_id": job["id"]},
        headers={**alice.headers, "Accept": "text/event-stream"},
    )
    assert response.headers["content-type"][0].startswith("text/event-stream")
    assert b"event: job.cancelled" in response.content


def test_a_304_is_declared_without_a_body_and_with_its_etag(app, alice, spec):
    declared = spec["paths"]["/v1/documents/{document_id}"]["get"]["responses"]["304"]
    assert "content" not in declared and "ETag" in declared["headers"]
    made = alice.post("/v1/documents", json={"title": "t", "content": "c"})
    response = conforming(
        app,
        "GET",
        "/v1/documents/{document_id}",
        path_parameters={"document_id": made.json["id"]},
        headers={**alice.headers, "If-None-Match": made.headers["ETag"]},
    )
    assert response.status_code == 304
    assert response.headers["etag"] == [made.headers["ETag"]]


def test_a_streams_answers_conform(app, alice):
    """Its version (200, 304), a stream that is not there (404), and the list, whole and
    refused (a cursor of another listing)."""
    appended = alice.post(
        "/v1/streams/order-1/events", json={"events": [{"type": "a", "data": {}}]}
    )
    assert appended.status_code == 201
    for headers, status in (({}, 200), ({"If-None-Match": '"1"'}, 304)):
        response = conforming(
            app,
            "GET",
            "/v1/streams/{stream}",
            path_parameters={"stream": "order-1"},
            headers={**alice.headers, **headers},
        )
        assert response.status_code == status
        assert response.headers["etag"] == ['"1"']
    missing = conforming(
        app, "GET", "/v1/streams/{stream}", path_parameters={"stream": "x"}, headers=alice.headers
    )
    assert missing.status_code == 404
    for query, status in (({"prefix": "order-"}, 200), ({"prefix": "o", "cursor": "x"}, 422)):
        listed = conforming(app, "GET", "/v1/streams", query=query, headers=alice.headers)
        assert listed.status_code == status, listed.json()
    assert listed.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    ("method", "path", "status", "headers"),
    [
        ("post", "/v1/jobs", "202", {"Location"}),
        ("post", "/v1/jobs/{job_id}/retry", "202", {"Location"}),
        ("post", "/v1/agents", "201", {"Location", "ETag"}),
        ("get", "/v1/agents/{agent_id}", "200", {"ETag"}),
        ("post", "/v1/documents", "201", {"Location", "ETag"}),
        ("get", "/v1/documents/{document_id}", "200", {"ETag"}),
        ("get", "/v1/streams/{stream}", "200", {"ETag"}),
        ("get", "/v1/streams/{stream}", "304", {"ETag"}),
        ("post", "/v1/streams/{stream}/events", "201", {"ETag"}),
        ("post", "/v1/webhooks", "201", {"Location"}),
        ("post", "/v1/events/batch", "202", {"Location"}),
        ("get", "/v1/agents", "200", {"RateLimit-Limit", "RateLimit-Remaining"}),
    ],
)
def test_response_headers_are_declared(spec, method, path, status, headers):
    declared = spec["paths"][path][method]["responses"][status]["headers"]
    assert headers <= declared.keys()


def test_job_timeouts_declare_the_servers_maxima(app_with, alice):
    """The schema had no maximum, yet the server refuses more than JOB_MAX_TIMEOUT_S and
    JOB_MAX_QUEUE_TIMEOUT_S (422): the document now says this deployment's values."""
    app = app_with(job_max_timeout_s=60, job_max_queue_timeout_s=600)
    client = app.test_client()
    properties = client.get("/openapi.json").json["components"]["schemas"]["JobIn"]["properties"]
    for name, maximum in (("timeout_s", 60), ("queue_timeout_s", 600)):
        integer = next(b for b in properties[name]["anyOf"] if b.get("type") == "integer")
        assert integer["maximum"] == maximum
        user = AuthClient(client, alice.email, alice.tokens)
        agent = user.create_agent()
        over = {"agent_id": agent["id"], "input": {"text": "x"}, name: maximum + 1}
        assert user.post("/v1/jobs", json=over).status_code == 422
        assert user.post("/v1/jobs", json={**over, name: maximum}).status_code == 202


def _path_parameters(spec: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = [
        parameter
        for _, _, operation in _operations(spec)
        for parameter in operation.get("parameters", [])
        if parameter.get("in") == "path" and parameter["name"] == name
    ]
    assert found, name
    return found


def test_a_stream_name_in_a_path_is_declared_as_the_routes_take_it(spec, alice):
    """It was any string: a client built from the document sent names the routes refuse
    (422), and could not tell why."""
    for parameter in _path_parameters(spec, "stream"):
        schema = parameter["schema"]
        assert schema["type"] == "string"
        assert (schema["minLength"], schema["maxLength"]) == (1, 200)
        assert "job-" in parameter["description"]
    pattern = re.compile(schema["pattern"])
    for name in ("a", "order-42", "a.b:c_d", ".x", "..", "a b", "é", "a" * 201):
        declared = bool(pattern.search(name)) and len(name) <= schema["maxLength"]
        status = alice.get(f"/v1/streams/{quote(name)}/events").status_code
        assert status == (200 if declared else 422), name


@pytest.mark.parametrize("name", ["document_id", "receipt_id", "job_id", "agent_id"])
def test_ids_in_paths_are_declared_as_uuids(spec, name):
    """The routes match only a UUID there (anything else is no URL of ours, a 404); the
    document said any string."""
    for parameter in _path_parameters(spec, name):
        assert parameter["schema"] == {"type": "string", "format": "uuid"}


def test_document_and_event_limits_are_declared_with_this_deployments_values(app_with, alice):
    """The server refuses a title past DOCUMENT_MAX_TITLE_LENGTH (422), content past
    DOCUMENT_MAX_CONTENT_BYTES (413), metadata past DOCUMENT_MAX_METADATA_BYTES and an
    event's data past EVENT_MAX_DATA_BYTES (422); the document said none of it."""
    app = app_with(
        document_max_title_length=40,
        document_max_content_bytes=3000,
        document_max_metadata_bytes=700,
        event_max_data_bytes=5000,
    )
    client = app.test_client()
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name in ("DocumentIn", "DocumentPatch"):
        properties = schemas[name]["properties"]
        title = properties["title"]
        strings = [b for b in title.get("anyOf", [title]) if b["type"] == "string"]
        assert [b["maxLength"] for b in strings] == [40]
        assert "3000 bytes" in properties["content"]["description"]
        assert "700 bytes" in properties["metadata"]["description"]
    for name in ("AppendIn.EventIn", "BatchIn.BatchEventIn"):
        properties = schemas[name]["properties"]
        assert "5000 bytes" in properties["data"]["description"]
        assert "16384 bytes" in properties["metadata"]["description"]
    user = AuthClient(client, alice.email, alice.tokens)
    assert user.post("/v1/documents", json={"title": "t" * 41, "content": ""}).status_code == 422
    assert user.post("/v1/documents", json={"title": "t" * 40, "content": ""}).status_code == 201
    event = {"type": "t", "data": {"x": "y" * 5000}}
    assert user.post("/v1/streams/s/events", json={"events": [event]}).status_code == 422


@pytest.mark.parametrize(
    ("schema", "prop"),
    [("JobIn", "metadata"), ("AgentIn", "params"), ("AgentPatch", "params")],
)
def test_small_objects_declare_their_size_limit(spec, schema, prop):
    """A job's metadata and an agent's params are refused past 16 KiB of JSON (422), which
    no schema said: JSON Schema has no size of a whole value, so the description does."""
    declared = spec["components"]["schemas"][schema]["properties"][prop]
    said = [declared.get("description", "")] + [
        branch.get("description", "") for branch in declared.get("anyOf", [])
    ]
    assert any("at most 16384 bytes as JSON" in text for text in said), declared


def test_a_receipts_results_are_declared_and_conform(app, alice, session, spec):
    """The document said "a list of objects": a result's members and statuses are declared
    now, and a rejected batch's receipt, of every status but `duplicate`, conforms."""
    receipt = spec["components"]["schemas"]["ReceiptOut"]["properties"]["results"]
    result = next(b for b in receipt["anyOf"] if b["type"] == "array")["items"]
    assert set(result["properties"]["status"]["enum"]) == {
        "persisted",
        "duplicate",
        "rejected",
        "not_persisted",
    }
    taken = str(uuid.uuid4())
    appended = {"events": [{"type": "t", "data": {}, "event_id": taken}]}
    assert alice.post("/v1/streams/first/events", json=appended).status_code == 201
    batch = {
        "events": [
            {"stream": "fine", "type": "t", "data": {}},
            {"stream": "second", "type": "t", "data": {}, "event_id": taken},
        ]
    }
    accepted = alice.post("/v1/events/batch", json=batch).json
    assert event_batches.persist(session, uuid.UUID(accepted["receipt_id"])) == "rejected"
    response = conforming(
        app,
        "GET",
        "/v1/events/receipts/{receipt_id}",
        path_parameters={"receipt_id": accepted["receipt_id"]},
        headers=alice.headers,
    )
    assert [r["status"] for r in response.json()["results"]] == ["not_persisted", "rejected"]
