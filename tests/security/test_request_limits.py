"""What one request may carry: body size (413), JSON depth, key and string lengths (422,
checked before validation), and page sizes (every list's `limit` has a maximum)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest

from api.json_limits import JsonLimits, check_shape
from services.errors import InvalidInput
from tests.helpers import AuthClient, every_item
from tests.security.conftest import client_at
from tests.security.support import send


def _nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _post_raw(user: AuthClient, url: str, body: Any, deep: int | None = None) -> Any:
    """`body` as JSON, with the string "DEEP" replaced by an object `deep` levels deep
    (written by hand: encoders stop at a few hundred levels)."""
    data = json.dumps(body)
    if deep is not None:
        data = data.replace('"DEEP"', '{"a":' * (deep - 1) + "{}" + "}" * (deep - 1))
    return user.client.post(url, data=data, content_type="application/json", headers=user.headers)


# Where free-form JSON goes in: each body's own depth is counted in, see `test_depth_boundary`.
FREE_FORM = {
    "agent params": ("/v1/agents", lambda v: {"name": "n", "provider": "echo", "params": v}),
    "job metadata": ("/v1/jobs", None),
    "event data": ("/v1/streams/orders/events", lambda v: {"events": [{"type": "t", "data": v}]}),
    "document metadata": ("/v1/documents", lambda v: {"title": "t", "content": "", "metadata": v}),
}


@pytest.mark.parametrize("where", sorted(FREE_FORM))
@pytest.mark.parametrize("depth", [40, 300, 1000])
def test_deep_bodies_are_422_not_500(alice, where, depth):
    """300 levels once passed validation and then failed to serialize: a 500."""
    url, make = FREE_FORM[where]
    if make is None:
        agent_id = alice.create_agent()["id"]

        def make(v):  # type: ignore[no-untyped-def]
            return {"agent_id": agent_id, "input": {"text": "x"}, "metadata": v}

    response = _post_raw(alice, url, make("DEEP"), deep=depth)
    assert response.status_code == 422, response.json
    assert response.json["type"] == "/problems/validation-error"
    assert "nests deeper than 32 levels" in response.json["errors"][0]["detail"]
    assert alice.get(url).json["items"] == []  # nothing was written


def test_depth_boundary(alice):
    # The body is one level, params the second: 32 levels in all pass, 33 do not.
    ok = _post_raw(alice, "/v1/agents", {"name": "n", "provider": "echo", "params": _nested(31)})
    assert ok.status_code == 201, ok.json
    deep = _post_raw(alice, "/v1/agents", {"name": "n", "provider": "echo", "params": _nested(32)})
    assert deep.status_code == 422
    assert deep.json["errors"][0]["field"].startswith("params.a.a")


def test_long_keys_are_422(alice):
    params = {"k" * 1025: 1}
    response = alice.post("/v1/agents", json={"name": "n", "provider": "echo", "params": params})
    assert response.status_code == 422
    assert "key longer than 1024" in response.json["errors"][0]["detail"]
    fine = alice.post(
        "/v1/agents", json={"name": "n", "provider": "echo", "params": {"k" * 1024: 1}}
    )
    assert fine.status_code == 201


def test_long_strings_are_422_before_validation(make_app):
    app = make_app(json_max_string_chars=300)
    user = AuthClient.register(client_at(app), "strings@example.com")
    body = {"title": "t", "content": "c" * 301}
    response = user.post("/v1/documents", json=body)
    assert response.status_code == 422
    assert response.json["errors"] == [
        {"location": "body", "field": "content", "detail": "is longer than 300 characters"}
    ]
    assert user.post("/v1/documents", json={"title": "t", "content": "c" * 300}).status_code == 201


def test_bodies_over_the_limit_are_413(make_app):
    app = make_app(max_body_bytes=4096)
    user = AuthClient.register(client_at(app), "big@example.com")
    response = user.post("/v1/documents", json={"title": "t", "content": "x" * 5000})
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert user.get("/v1/documents").json["items"] == []


def test_the_shape_check_walks_only_when_it_must():
    limits = JsonLimits(max_depth=3, max_key_chars=5, max_string_chars=10)
    # Few brackets and a short body: not walked, whatever the parsed value holds.
    check_shape({"a": {"b": {"c": {"d": 1}}}}, raw=b"{}", limits=limits)
    with pytest.raises(InvalidInput):
        check_shape(_nested(4), raw=b"{{{{}}}}", limits=limits)
    with pytest.raises(InvalidInput):
        check_shape([["x" * 11]], raw=b'[["xxxxxxxxxxx"]]', limits=limits)
    check_shape([["x" * 10]], raw=b'[["xxxxxxxxxx"]]', limits=limits)


def _shape(value: object, limits: JsonLimits) -> str | None:
    """The field check_shape refuses for `value` as orjson writes it, or None."""
    try:
        check_shape(value, raw=orjson.dumps(value), limits=limits)
    except InvalidInput as error:
        return error.problems[0].field
    return None


def test_many_shallow_brackets_are_not_too_deep_but_one_deep_branch_is():
    """A batch has thousands of brackets, all shallow: the level-by-level count lets it
    through without the walk; one branch past the limit among them is still found."""
    limits = JsonLimits(max_depth=4, max_key_chars=8, max_string_chars=100)
    batch = {"events": [{"data": {"i": k}} for k in range(500)]}
    assert _shape(batch, limits) is None
    batch["events"][321]["data"] = {"i": {"j": 1}}
    assert _shape(batch, limits) == "events.321.data.i"


def test_long_keys_and_strings_are_found_in_a_large_body_of_short_ones():
    limits = JsonLimits(max_depth=8, max_key_chars=8, max_string_chars=20)
    body = {"events": [{"stream": f"s-{k % 9}", "data": "x" * 8} for k in range(500)]}
    assert _shape(body, limits) is None
    body["events"][7]["data"] = "x" * 20  # longer than a key may be, within a string's limit
    assert _shape(body, limits) is None
    body["events"][8]["data"] = "x" * 21
    assert _shape(body, limits) == "events.8.data"
    # Escaped quotes split a long key into short runs of bytes: still found.
    del body["events"][8]["data"]
    body["events"][9] = {'"a"b"c"d"': 1}
    assert _shape(body, limits) == "events.9"


def test_every_list_has_a_bounded_page_size(alice, client):
    """From the OpenAPI document, so that a new list endpoint is covered when it lands."""
    spec = client.get("/openapi.json").json
    lists = 0
    for path, operations in spec["paths"].items():
        if "{" in path or "get" not in operations:
            continue
        parameters = operations["get"].get("parameters", [])
        params = {p["name"]: p for p in parameters if "$ref" not in p}  # refs: headers
        if "limit" not in params:
            continue
        lists += 1
        maximum = params["limit"]["schema"]["maximum"]
        assert maximum <= 1000, path
        assert alice.get(f"{path}?limit={maximum + 1}").status_code == 422, path
        assert alice.get(f"{path}?limit=0").status_code == 422, path
        assert alice.get(f"{path}?limit={maximum}").status_code == 200, path
    assert lists >= 6


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/v1/documents?q=%00", None),
        ("GET", "/v1/documents?q=a%00b", None),
        ("GET", "/v1/events?type=a%00b", None),
        ("GET", "/v1/documents?metadata=%7B%22a%22%3A%22%5Cu0000%22%7D", None),
        ("GET", "/v1/agents?%00=1", None),
        ("POST", "/v1/agents", {"name": "a\x00", "provider": "echo"}),
        ("POST", "/v1/agents", {"name": "a", "provider": "echo", "params": {"k\x00": 1}}),
        ("POST", "/v1/documents", {"title": "t", "content": "x\x00y"}),
        ("POST", "/v1/streams/s/events", {"events": [{"type": "t", "data": {"v": ["\x00"]}}]}),
    ],
)
def test_nul_characters_are_422_not_500(alice, method, url, body):
    """PostgreSQL stores no NUL, in text or jsonb; these were 500s."""
    response = send(alice.client, method, url, alice.headers, body)
    assert response.status_code == 422, response.json
    assert response.json["type"] == "/problems/validation-error"


def _big_user(make_app: Any, max_bytes: int) -> AuthClient:
    app = make_app(page_max_bytes=max_bytes)
    return AuthClient.register(client_at(app), f"pages-{uuid.uuid4().hex[:8]}@example.com")


def test_pages_of_jobs_end_by_bytes_and_go_on_from_there(make_app):
    """A page of 200 jobs of megabytes each was read whole into the web process."""
    user = _big_user(make_app, 4096)
    agent = user.create_agent()
    submitted = [user.submit(agent["id"], text=f"{i}" + "x" * 1500)["id"] for i in range(5)]
    first = user.get("/v1/jobs?limit=10").json
    # ~1.5 KB of input each: the third job reaches 4 KB, and the page ends after it.
    assert [job["id"] for job in first["items"]] == submitted[::-1][:3]
    assert first["next_cursor"] is not None
    assert [job["id"] for job in every_item(user, "/v1/jobs", limit=10)] == submitted[::-1]


def test_pages_of_agents_end_by_bytes(make_app):
    user = _big_user(make_app, 4096)
    created = [user.create_agent(instructions=f"{i}" + "x" * 1500)["id"] for i in range(5)]
    first = user.get("/v1/agents?limit=10").json
    assert [agent["id"] for agent in first["items"]] == created[::-1][:3]
    assert [agent["id"] for agent in every_item(user, "/v1/agents", limit=10)] == created[::-1]


def test_pages_of_stream_events_end_by_bytes(make_app):
    user = _big_user(make_app, 4096)
    events = [{"type": "t", "data": {"text": f"{i}" + "x" * 1500}} for i in range(5)]
    assert user.post("/v1/streams/big/events", json={"events": events}).status_code == 201
    page = user.get("/v1/streams/big/events?limit=10").json
    assert [e["version"] for e in page["items"]] == [1, 2, 3]
    assert page["next_cursor"] == "4"
    rest = user.get("/v1/streams/big/events?limit=10&cursor=4").json
    assert [e["version"] for e in rest["items"]] == [4, 5]
    assert rest["next_cursor"] is None


def test_an_item_larger_than_a_page_still_comes_one_a_page(make_app):
    user = _big_user(make_app, 1024)
    events = [{"type": "t", "data": {"text": "x" * 3000}} for _ in range(3)]
    assert user.post("/v1/streams/huge/events", json={"events": events}).status_code == 201
    versions = [e["version"] for e in every_item(user, "/v1/streams/huge/events", limit=10)]
    assert versions == [1, 2, 3]
    assert len(user.get("/v1/streams/huge/events?limit=10").json["items"]) == 1


@pytest.mark.parametrize(
    "url",
    [
        "/v1/jobs?status=queued&status=running",
        "/v1/jobs?limit=1&limit=200",
        "/v1/events?type=a&type=b",
        "/v1/agents?cursor=&limit=5&cursor=x",
    ],
)
def test_a_query_parameter_given_twice_is_422_naming_it(alice, url):
    """The validators read a parameter's first value: a second status or type was dropped
    without a word, and the answer looked like the one asked for."""
    response = alice.get(url)
    assert response.status_code == 422, response.json
    [error] = response.json["errors"]
    name = url.split("?")[1].split("&")[-1].split("=")[0]
    assert error == {
        "location": "query",
        "field": name,
        "detail": "given more than once; every query parameter takes one value",
    }


def test_distinct_query_parameters_are_read_as_before(alice):
    agent = alice.create_agent()
    job = alice.submit(agent["id"])
    page = alice.get(f"/v1/jobs?status=queued&agent_id={agent['id']}&limit=5")
    assert page.status_code == 200
    assert [item["id"] for item in page.json["items"]] == [job["id"]]
