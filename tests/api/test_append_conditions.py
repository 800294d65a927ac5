"""`If-Match` and `If-None-Match` on appends: a single append is checked against the
stream's ETag, its version (as `GET /v1/streams/<stream>` sends it); a batch, which adds a
receipt under a new id, against its collection. They were ignored: a client's conditional
append was made unconditionally."""

import uuid

import pytest

from tests.helpers import stream_versions


def post(client, stream, status, *, ids=False, **headers):
    events = [{"type": "t", "data": {}, **({"event_id": str(uuid.uuid4())} if ids else {})}]
    response = client.post(f"/v1/streams/{stream}/events", json={"events": events}, headers=headers)
    assert response.status_code == status, response.json
    return response


@pytest.mark.parametrize("ids", [False, True], ids=["server ids", "client ids"])
def test_if_match_appends_only_at_the_streams_etag(alice, ids):
    post(alice, "matched", 201, ids=ids)
    post(alice, "matched", 201, ids=ids)
    tag = alice.get("/v1/streams/matched").headers["ETag"]
    assert tag == '"2"'
    refused = post(alice, "matched", 412, ids=ids, **{"If-Match": '"1"'})
    assert refused.mimetype == "application/problem+json"
    assert refused.json["type"] == "/problems/precondition-failed"
    assert refused.json["current_version"] == 2
    assert stream_versions(alice, "matched") == [1, 2]
    assert post(alice, "matched", 201, ids=ids, **{"If-Match": tag}).json["first_version"] == 3
    # Any tag of a list, a weak one too (a compressing proxy weakens the tags it passes).
    post(alice, "matched", 201, ids=ids, **{"If-Match": '"1", W/"3"'})
    post(alice, "matched", 201, ids=ids, **{"If-Match": "*"})
    assert stream_versions(alice, "matched") == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("ids", [False, True], ids=["server ids", "client ids"])
def test_an_append_answers_the_streams_new_etag(alice, ids):
    """As a document's writes do: a writer chaining conditional appends sends the tag it was
    answered, without reading the stream between them. The 201 had no ETag."""
    first = post(alice, "chained", 201, ids=ids, **{"If-None-Match": "*"})
    assert first.headers["ETag"] == '"1"'
    second = post(alice, "chained", 201, ids=ids, **{"If-Match": first.headers["ETag"]})
    assert second.headers["ETag"] == '"2"' == alice.get("/v1/streams/chained").headers["ETag"]
    post(alice, "chained", 412, ids=ids, **{"If-Match": first.headers["ETag"]})
    assert stream_versions(alice, "chained") == [1, 2]


def test_a_replayed_append_answers_the_etag_it_answered_first(alice):
    """Its first answer again, byte for byte and header for header, by `event_id` or by
    `Idempotency-Key`: the tag is the stream's version after those events."""
    events = [{"type": "t", "data": {}, "event_id": str(uuid.uuid4())}]
    url = "/v1/streams/replayed/events"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = alice.post(url, json={"events": events}, headers=key)
    post(alice, "replayed", 201)
    for headers in (key, {}):
        again = alice.post(url, json={"events": events}, headers=headers)
        assert again.status_code == 201 and again.json == first.json
        assert again.headers["ETag"] == first.headers["ETag"] == '"1"'


@pytest.mark.parametrize("ids", [False, True], ids=["server ids", "client ids"])
def test_a_stream_without_events_matches_no_if_match(alice, ids):
    """GET answers 404 and no ETag for it, so no tag, and not `*`, is its."""
    for tag in ('"1"', '"0"', "*"):
        post(alice, "absent", 412, ids=ids, **{"If-Match": tag})
    assert alice.get("/v1/streams/absent").status_code == 404


@pytest.mark.parametrize("ids", [False, True], ids=["server ids", "client ids"])
def test_if_none_match_star_appends_only_to_a_stream_that_does_not_exist(alice, ids):
    created = post(alice, "fresh", 201, ids=ids, **{"If-None-Match": "*"})
    assert created.json["first_version"] == 1
    refused = post(alice, "fresh", 412, ids=ids, **{"If-None-Match": "*"})
    assert refused.json["current_version"] == 1
    assert stream_versions(alice, "fresh") == [1]


def test_a_stream_left_at_version_0_by_a_refused_append_does_not_exist(alice):
    refused = alice.post(
        "/v1/streams/left/events",
        json={"events": [{"type": "t", "data": {}}], "expected_version": 5},
    )
    assert refused.status_code == 409
    post(alice, "left", 412, **{"If-Match": "*"})
    post(alice, "left", 201, **{"If-None-Match": "*"})


def test_if_none_match_with_tags_refuses_those_versions(alice):
    post(alice, "tagged", 201)
    refused = post(alice, "tagged", 412, **{"If-None-Match": '"3", "1"'})
    assert refused.json["current_version"] == 1
    post(alice, "tagged", 201, **{"If-None-Match": '"2"'})
    post(alice, "other-tagged", 201, **{"If-None-Match": '"1"'})


def test_conditions_and_expected_version_must_both_hold(alice):
    post(alice, "both", 201)
    url = "/v1/streams/both/events"
    body = {"events": [{"type": "t", "data": {}}], "expected_version": 0}
    # The precondition is evaluated first (RFC 9110, 13.2.2): 412, not the 409.
    assert alice.post(url, json=body, headers={"If-Match": '"2"'}).status_code == 412
    assert alice.post(url, json=body, headers={"If-Match": '"1"'}).status_code == 409
    assert stream_versions(alice, "both") == [1]


def test_a_retry_of_an_append_with_ids_gets_its_first_answer_whatever_its_condition(alice):
    """As with `expected_version`: the stream has moved on by the retry's own events."""
    events = [{"type": "t", "data": {}, "event_id": str(uuid.uuid4())}]
    url = "/v1/streams/retried/events"
    first = alice.post(url, json={"events": events}, headers={"If-None-Match": "*"})
    assert first.status_code == 201
    again = alice.post(url, json={"events": events}, headers={"If-None-Match": "*"})
    assert again.status_code == 201 and again.json == first.json
    assert stream_versions(alice, "retried") == [1]


@pytest.mark.parametrize("tag", ['"x"', '"02"', "nonsense", '""'])
def test_a_tag_that_is_no_version_is_422_on_the_header(alice, tag):
    refused = post(alice, "bad-tag", 422, **{"If-Match": tag})
    assert refused.json["errors"][0]["field"] == "If-Match"
    assert alice.get("/v1/streams/bad-tag").status_code == 404


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [
        ("If-Match", '"1"', 412),
        ("If-None-Match", "*", 412),
        ("If-Match", "*", 202),
        ("If-None-Match", '"1"', 202),
    ],
)
def test_a_batch_checks_conditions_against_its_collection(alice, header, value, status):
    """A batch adds a receipt under a new id: its target is the collection, which exists
    and has no ETag, as for every such create. A stream's version is no tag of it."""
    post(alice, "batched", 201)
    body = {"events": [{"stream": "batched", "type": "t", "data": {}}]}
    answer = alice.post("/v1/events/batch", json=body, headers={header: value})
    assert answer.status_code == status, answer.json
    if status == 412:
        assert answer.json["type"] == "/problems/precondition-failed"
