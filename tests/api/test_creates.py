"""Every POST that makes a resource under a server id: its preconditions, its names, and
`Idempotency-Key`.

`If-Match` / `If-None-Match`: the target of such a POST is the collection, which exists and
has no ETag (RFC 9110): `If-None-Match: *` ("only if nothing is there") and `If-Match` with
tags are 412s and nothing is made. Documents evaluated them first; agents, API keys, webhook
endpoints and jobs ignored them and made a second resource as if the condition had held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.api.test_problems import assert_problem
from tests.helpers import AuthClient, sent_twice

RECEIVER = "http://127.0.0.1:9/hook"  # registration only: nothing is sent


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})


def _agent(_alice: AuthClient) -> dict[str, Any]:
    return {"name": "a", "provider": "echo"}


def _key(_alice: AuthClient) -> dict[str, Any]:
    return {"name": "ci"}


def _endpoint(_alice: AuthClient) -> dict[str, Any]:
    return {"url": RECEIVER, "event_types": ["job.succeeded"]}


def _job(alice: AuthClient) -> dict[str, Any]:
    return {"agent_id": alice.create_agent()["id"], "input": {"text": "hi"}}


# How the 412 names what a POST adds ("a agent" and "a endpoint" were the grammar's once).
ADDS = {
    "/v1/agents": "adds an agent",
    "/v1/api-keys": "adds a key",
    "/v1/webhooks": "adds an endpoint",
    "/v1/jobs": "adds a job",
}

CREATES: list[tuple[str, Callable[[AuthClient], dict[str, Any]]]] = [
    ("/v1/agents", _agent),
    ("/v1/api-keys", _key),
    ("/v1/webhooks", _endpoint),
    ("/v1/jobs", _job),
]


@pytest.mark.parametrize(("collection", "body_for"), CREATES, ids=[c for c, _ in CREATES])
def test_a_create_evaluates_its_preconditions_against_the_collection(
    alice: AuthClient, collection: str, body_for: Callable[[AuthClient], dict[str, Any]]
) -> None:
    body = body_for(alice)
    before = alice.get(collection).json["items"]
    for headers in ({"If-None-Match": "*"}, {"If-Match": '"1"'}):
        refused = alice.post(collection, json=body, headers=headers)
        assert_problem(refused, 412)
        assert collection in refused.json["detail"], headers
        assert ADDS[collection] in refused.json["detail"], headers
    bad_tag = alice.post(collection, json=body, headers={"If-None-Match": "abc"})
    assert bad_tag.status_code == 422 and bad_tag.json["errors"][0]["field"] == "If-None-Match"
    assert alice.get(collection).json["items"] == before

    for headers in ({"If-Match": "*"}, {"If-None-Match": '"1"'}):
        assert alice.post(collection, json=body, headers=headers).status_code in (201, 202)
    assert len(alice.get(collection).json["items"]) == len(before) + 2


@pytest.mark.parametrize("collection", ["/v1/agents", "/v1/api-keys"])
@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "\x1b[31mred", "   ", "a\u2028b"])
def test_names_are_one_line_without_control_characters(
    alice: AuthClient, collection: str, name: str
) -> None:
    """As a document's title: a name is listed on one line, and a terminal runs escapes."""
    body = {"name": name, "provider": "echo"} if collection == "/v1/agents" else {"name": name}
    refused = alice.post(collection, json=body)
    assert_problem(refused, 422)
    assert refused.json["errors"][0]["field"] == "name"
    assert alice.get(collection).json["items"] == []


def _document(_alice: AuthClient) -> dict[str, Any]:
    return {"title": "t", "content": "once"}


@pytest.mark.parametrize(
    ("collection", "body_for"),
    [("/v1/agents", _agent), ("/v1/documents", _document)],
    ids=["agents", "documents"],
)
def test_a_create_with_a_key_is_made_once_and_replayed_with_its_etag(
    alice: AuthClient, collection: str, body_for: Callable[[AuthClient], dict[str, Any]]
) -> None:
    """A client that retries a create whose answer it lost made a second agent or document:
    only jobs took the key."""
    body, headers = body_for(alice), {"Idempotency-Key": "create-1"}
    first, second = sent_twice(alice, collection, body, headers, 201)
    for header in ("Location", "ETag"):
        assert second.headers[header] == first.headers[header]
    assert len(alice.get(collection).json["items"]) == 1

    another = {**body, "name" if "name" in body else "title": "another"}
    other = alice.post(collection, json=another, headers=headers)
    assert_problem(other, 422)
    assert other.json["errors"][0]["field"] == "Idempotency-Key"
    assert len(alice.get(collection).json["items"]) == 1


def test_an_invalid_create_with_a_key_stores_nothing(alice: AuthClient) -> None:
    headers = {"Idempotency-Key": "after-error"}
    assert alice.post("/v1/documents", json={"title": ""}, headers=headers).status_code == 422
    made = alice.post("/v1/documents", json=_document(alice), headers=headers)
    assert made.status_code == 201 and "Idempotent-Replayed" not in made.headers


@pytest.mark.parametrize(
    ("collection", "body_for"),
    [("/v1/api-keys", _key), ("/v1/webhooks", _endpoint)],
    ids=["api-keys", "webhooks"],
)
def test_a_create_whose_answer_holds_a_secret_refuses_a_key(
    alice: AuthClient, collection: str, body_for: Callable[[AuthClient], dict[str, Any]]
) -> None:
    """Its answer (the key, the signing secret) is shown once and kept nowhere in the clear:
    storing it for a replay would keep it a day. A key was ignored, and a retry made two."""
    refused = alice.post(collection, json=body_for(alice), headers={"Idempotency-Key": "k"})
    assert_problem(refused, 422)
    assert refused.json["errors"][0]["field"] == "Idempotency-Key"
    assert alice.get(collection).json["items"] == []
