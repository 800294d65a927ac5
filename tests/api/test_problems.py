"""Every error is a problem document; nothing internal reaches the client."""

import io
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


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/v1/streams/orders%2F1/events"),
        ("post", "/v1/streams/orders%2f1/events"),
        ("get", "/v1/streams/orders%2F1"),
    ],
)
def test_a_404_for_an_encoded_slash_says_that_it_is_one(alice, method, url):
    """An encoded slash is a slash by the time a URL is routed (here, and in most servers
    and proxies before us), so a stream named "orders/1" sent as `orders%2F1` met a bare
    "nothing at this URL", and its sender could not tell why."""
    body = {"json": {"events": [{"type": "t", "data": {}}]}} if method == "post" else {}
    answer = getattr(alice, method)(url, **body)
    detail = assert_problem(answer, 404)["detail"]
    assert "%2F" in detail and "'/'" in detail
    plain = assert_problem(alice.get("/v1/streams/orders/1/events"), 404)["detail"]
    assert "%2F" not in plain
    assert "%2F" not in assert_problem(alice.get("/v1/nothing?q=%2F"), 404)["detail"]


def test_wrong_method_is_405(client):
    body = assert_problem(client.delete("/healthz"), 405)
    assert "method" in body["detail"]


def test_malformed_json_is_400(alice):
    response = alice.post(
        "/v1/agents", data=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "JSON" in body["detail"]


@pytest.mark.parametrize(
    ("url", "raw", "said"),
    [
        (
            "/v1/streams/s/events",
            b'{"events": [{"type": "t", "data": {"x": "\\ud800"}}]}',
            "surrogate",
        ),
        ("/v1/events/batch", b'{"events": [{"stream": "\\udc00", "type": "t"}]}', "surrogate"),
        ("/v1/documents", b'{"title": "a\\ud800\\u0041", "content": ""}', "surrogate"),
        ("/v1/documents", b'{"title": "a", "content": "b"} trailing', "after document"),
    ],
)
def test_a_body_that_is_not_json_says_why_and_where(alice, url, raw, said):
    """A lone surrogate escape (\\ud800 without its pair; JSON's grammar allows it, UTF-8
    cannot carry it) was "The request body is not valid JSON." with neither reason nor
    place: in a batch of a thousand events, the client could not tell which string."""
    response = alice.post(url, data=raw, headers={"Content-Type": "application/json"})
    body = assert_problem(response, 400)
    assert body["detail"].startswith("The request body is not valid JSON: ")
    assert said in body["detail"] and "column" in body["detail"]


@pytest.mark.parametrize(
    ("raw", "byte", "offset"),
    [
        ('{"name": "caf\u00e9", "provider": "echo"}'.encode("latin-1"), "0xe9", 13),
        (b'{"name": "a", "provider": "echo"}\xff', "0xff", 33),
    ],
)
def test_a_body_that_is_not_utf8_says_so_and_where(alice, raw, byte, offset):
    """orjson's reason for any byte that is not UTF-8 is "str is not valid UTF-8:
    surrogates not allowed" at "line 1 column 1 (char 0)", and the surrogate hint was
    added to it: a Latin-1 client was told about escapes it never sent, at the wrong
    place."""
    response = alice.post("/v1/agents", data=raw, headers={"Content-Type": "application/json"})
    body = assert_problem(response, 400)
    assert "surrogate" not in body["detail"]
    assert f"not UTF-8: byte {byte} at offset {offset}" in body["detail"]
    assert alice.get("/v1/agents").json["items"] == []


@pytest.mark.parametrize(
    ("method", "url", "body", "field", "detail"),
    [
        ("PATCH", "agent", {}, "body", "give at least one field to change"),
        ("PATCH", "agent", {"name": None}, "body", "name cannot be null"),
        ("POST", "/v1/api-keys", {"name": "a\nb"}, "name", "must be one line without"),
        ("POST", "/v1/jobs", {"agent_id": str(uuid.uuid4()), "input": {}}, "input", "give text"),
    ],
)
def test_a_field_error_is_our_words_without_pydantics_prefix(
    alice, method, url, body, field, detail
):
    """Our validators' messages came with pydantic's "Value error, " in front of them."""
    if url == "agent":
        url = f"/v1/agents/{alice.create_agent()['id']}"
    response = getattr(alice, method.lower())(url, json=body)
    problem = assert_problem(response, 422)
    (error,) = problem["errors"]
    assert error["field"] == field and error["detail"].startswith(detail)
    assert "Value error" not in problem["detail"]


def test_non_json_body_is_415(alice):
    response = alice.post("/v1/agents", data=b"name=x", content_type="text/plain")
    assert_problem(response, 415)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/merge-patch+json", {"metadata": {"drop": None}}),
        ("application/json-patch+json", [{"op": "remove", "path": "/metadata/drop"}]),
    ],
)
def test_a_patch_document_is_415_not_read_as_plain_json(alice, content_type, body):
    """Both are `+json`, so they were taken as plain JSON: a merge patch's `null` (remove
    this key) was stored as a null, and the client's "delete" kept the key. A PATCH here
    replaces the fields it names; `Accept-Patch` says what it takes (RFC 5789, 2.2)."""
    made = alice.post("/v1/documents", json={"title": "t", "content": "c", "metadata": {"drop": 1}})
    url = f"/v1/documents/{made.json['id']}"
    refused = alice.patch(url, json=body, content_type=content_type)
    detail = assert_problem(refused, 415)["detail"]
    assert content_type in detail and "application/json" in detail
    assert refused.headers["Accept-Patch"] == "application/json"
    assert alice.get(url).json["metadata"] == {"drop": 1}
    posted = alice.post(
        "/v1/documents", json={"title": "t", "content": "c"}, content_type=content_type
    )
    assert_problem(posted, 415)
    assert "Accept-Patch" not in posted.headers


def test_too_large_body_is_413(alice, app):
    limit = app.extensions["conveyor"].settings.max_body_bytes
    payload = b'{"name": "' + b"x" * limit + b'"}'
    response = alice.post("/v1/agents", data=payload, content_type="application/json")
    assert_problem(response, 413)


def test_a_chunked_body_past_the_limit_is_413_not_cut_off(alice, app):
    """A body without Content-Length (chunked, which gunicorn ends for the application) was
    read up to the limit and the rest ignored: valid JSON there was taken, garbage after."""
    limit = app.extensions["conveyor"].settings.max_body_bytes

    def post_chunked(body: bytes):  # type: ignore[no-untyped-def]
        return alice.post(
            "/v1/documents",
            input_stream=io.BytesIO(body),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    assert_problem(post_chunked(b'{"title": "cut", "content": "b"}' + b" " * limit + b"X"), 413)
    assert alice.get("/v1/documents").json["items"] == []
    at_limit = b'{"title": "whole", "content": "b"}'
    response = post_chunked(at_limit + b" " * (limit - len(at_limit)))
    assert response.status_code == 201, response.json


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30])
def test_an_integer_that_cannot_be_kept_exactly_is_422(alice, number):
    """It was kept as the nearest double: 2**64 came back as 1.8446744073709552e+19."""
    body = b'{"title": "n", "content": "c", "metadata": {"n": %d}}' % number
    response = alice.post("/v1/documents", data=body, content_type="application/json")
    assert assert_problem(response, 422)["errors"][0]["field"] == "body"
    assert alice.get("/v1/documents").json["items"] == []


def test_integers_at_the_edges_and_long_digit_strings_are_kept(alice):
    metadata = {"top": 2**64 - 1, "bottom": -(2**63), "digits": "1" * 30}
    created = alice.post("/v1/documents", json={"title": "n", "content": "c", "metadata": metadata})
    assert created.status_code == 201, created.json
    assert alice.get(f"/v1/documents/{created.json['id']}").json["metadata"] == metadata


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


# --- numbers the database cannot hold ---------------------------------------------------
# Versions are PostgreSQL integers and feed positions bigints: one past the largest is a 422
# naming the field, not a statement that fails with a 500.
INT4_PAST, INT8_PAST = 2**31, 2**63


@pytest.fixture
def targets(alice):
    """A job, a document and a stream of alice's, for the requests below to name."""
    job = alice.submit(alice.create_agent()["id"])
    document = alice.post("/v1/documents", json={"title": "t", "content": "c"}).json
    appended = alice.post("/v1/streams/s/events", json={"events": [{"type": "t", "data": {}}]})
    assert appended.status_code == 201
    return {"job": job["id"], "document": document["id"]}


@pytest.mark.parametrize(
    ("url", "field"),
    [
        (f"/v1/streams/s/events?from_version={INT4_PAST}", "from_version"),
        (f"/v1/jobs/{{job}}/events?from_version={INT4_PAST}", "from_version"),
        (f"/v1/documents/{{document}}?version={INT4_PAST}", "version"),
        (f"/v1/documents/{{document}}/versions?cursor={INT4_PAST}", "cursor"),
        ("/v1/documents/{document}/versions?cursor=%C2%B2", "cursor"),  # "²": isdigit() says yes
        (f"/v1/events?after={INT8_PAST}", "after"),
    ],
)
def test_a_number_past_its_column_is_422(alice, targets, url, field):
    body = assert_problem(alice.get(url.format(**targets)), 422)
    assert [e["field"] for e in body["errors"]] == [field]


def test_an_expected_version_past_its_column_is_422_and_writes_nothing(alice, targets):
    events = [{"type": "t", "data": {}}]
    for expected in (INT4_PAST, str(INT4_PAST), -1):
        response = alice.post(
            "/v1/streams/s/events", json={"events": events, "expected_version": expected}
        )
        assert_problem(response, 422)
    assert [e["version"] for e in alice.get("/v1/streams/s/events").json["items"]] == [1]


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("tag", ['"²"', '"' + "1" * 5000 + '"', f'"{INT4_PAST}"', '""', 'W/""'])
def test_an_if_match_that_is_no_version_is_422_and_changes_nothing(alice, targets, header, tag):
    """An empty tag (`""`) was a 500: werkzeug reads it as None (found by schemathesis once
    the OpenAPI document declared the header)."""
    url = f"/v1/documents/{targets['document']}"
    response = alice.patch(url, json={"title": "changed"}, headers={header: tag})
    body = assert_problem(response, 422)
    assert body["errors"][0] == {
        "location": "header",
        "field": header,
        "detail": "expected an ETag this API returned",
    }
    assert alice.get(url).json["title"] == "t"


@pytest.mark.parametrize(
    ("url", "last_event_id"),
    [
        ("/v1/events", str(INT8_PAST)),
        ("/v1/events", "²"),
        ("/v1/streams/s/events", str(INT4_PAST)),
        ("/v1/jobs/{job}/events", str(INT4_PAST)),
        ("/v1/jobs/{job}/events", "1" * 5000),
        # Past the last event: the tail waited for the next one and skipped those between.
        ("/v1/streams/s/events", "2"),
        ("/v1/streams/never-written/events", "1"),
        ("/v1/jobs/{job}/events", "2"),
        # Not a position of the owner's feed: the problem named the query's `after`.
        ("/v1/events", str(INT8_PAST - 1)),
        *[
            (url, value)
            for url in ("/v1/events", "/v1/streams/s/events", "/v1/jobs/{job}/events")
            for value in ("abc", "-1", "1.0", "0x1", "1 2")
        ],
    ],
)
def test_a_last_event_id_we_never_sent_is_422_before_the_stream(alice, targets, url, last_event_id):
    headers = {"Accept": "text/event-stream", "Last-Event-ID": last_event_id}
    body = assert_problem(alice.get(url.format(**targets), headers=headers), 422)
    assert body["errors"] == [
        {"location": "header", "field": "Last-Event-ID", "detail": "expected an event id we sent"}
    ]


def test_an_answer_without_a_body_has_no_content_type(alice):
    """A 204 said `Content-Type: text/html`, Flask's default for `return "", 204`."""
    agent = alice.create_agent()
    deleted = alice.delete(f"/v1/agents/{agent['id']}")
    assert deleted.status_code == 204 and "Content-Type" not in deleted.headers


def test_a_feed_tail_names_the_cursor_the_client_sent(alice, bob, targets):
    """A `Last-Event-ID` that is no position of the caller's feed (another owner's, here)
    was refused as the query's `after`, which the client had not sent; a bad `after`
    itself still is."""
    theirs = bob.post("/v1/streams/b/events", json={"events": [{"type": "t", "data": {}}]})
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(theirs.json["positions"][0])}
    body = assert_problem(alice.get("/v1/events", headers=headers), 422)
    assert [(e["location"], e["field"]) for e in body["errors"]] == [("header", "Last-Event-ID")]
    stream = {"Accept": "text/event-stream"}
    body = assert_problem(alice.get(f"/v1/events?after={INT8_PAST - 1}", headers=stream), 422)
    assert [(e["location"], e["field"]) for e in body["errors"]] == [("query", "after")]
