"""`Idempotency-Key` on appends and batches, as on the creates (api/idempotent.py): a retry
of the same request gets the first answer, byte for byte, and writes nothing. The header
was ignored: a client retrying an append of events without ids, whose answer it lost,
appended them twice, and a retried batch was a second batch."""

from tests.api.test_problems import assert_problem
from tests.helpers import sent_twice, stream_versions

EVENTS = {"events": [{"type": "order.placed", "data": {"total": 12}}]}


def test_an_append_with_a_key_is_made_once_and_replayed(alice):
    url, headers = "/v1/streams/keyed/events", {"Idempotency-Key": "append-1"}
    sent_twice(alice, url, EVENTS, headers, 201)
    assert stream_versions(alice, "keyed") == [1]

    other = alice.post(url, json={**EVENTS, "expected_version": 1}, headers=headers)
    assert_problem(other, 422)
    assert other.json["errors"][0]["field"] == "Idempotency-Key"
    # The same body to another stream is another request.
    elsewhere = alice.post("/v1/streams/keyed-2/events", json=EVENTS, headers=headers)
    assert_problem(elsewhere, 422)
    assert stream_versions(alice, "keyed") == [1] and stream_versions(alice, "keyed-2") == []


def test_a_refused_append_with_a_key_stores_nothing(alice):
    url, headers = "/v1/streams/later/events", {"Idempotency-Key": "append-2"}
    body = {**EVENTS, "expected_version": 1}
    assert alice.post(url, json=body, headers=headers).status_code == 409
    alice.post(url, json=EVENTS)
    made = alice.post(url, json=body, headers=headers)
    assert made.status_code == 201 and "Idempotent-Replayed" not in made.headers
    assert stream_versions(alice, "later") == [1, 2]


def test_a_keyed_retry_of_a_conditional_append_gets_its_first_answer(alice):
    """Without the key, the retry met its own append: `If-None-Match: *` was a 412."""
    url = "/v1/streams/only-once/events"
    headers = {"Idempotency-Key": "append-3", "If-None-Match": "*"}
    sent_twice(alice, url, EVENTS, headers, 201)
    assert stream_versions(alice, "only-once") == [1]


def test_a_batch_with_a_key_is_accepted_once_and_replayed(alice):
    body = {"events": [{"stream": "keyed-batch", "type": "t", "data": {}}]}
    headers = {"Idempotency-Key": "batch-1"}
    first, second = sent_twice(alice, "/v1/events/batch", body, headers, 202)
    assert second.headers["Location"] == first.headers["Location"]
    other = alice.post("/v1/events/batch", json={"events": body["events"] * 2}, headers=headers)
    assert_problem(other, 422)
    assert other.json["errors"][0]["field"] == "Idempotency-Key"
