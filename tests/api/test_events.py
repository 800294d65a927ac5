"""Streams, idempotency, limits and batch receipts through the HTTP API."""

import uuid

import pytest

from models import EventBatch
from services import event_batches
from tests.helpers import every_item


def append(client, stream, *types, expected="any", ids=None, status=201):
    events = [
        {"type": t, "data": {"n": i}, **({"event_id": ids[i]} if ids else {})}
        for i, t in enumerate(types)
    ]
    response = client.post(
        f"/v1/streams/{stream}/events", json={"events": events, "expected_version": expected}
    )
    assert response.status_code == status, response.json
    return response.json


def persisted_results(client, session, body, status):
    """Accept the batch `body`, persist it here, check its `status`; the receipt's results."""
    receipt = client.post("/v1/events/batch", json=body).json
    assert event_batches.persist(session, uuid.UUID(receipt["receipt_id"])) == status
    return client.get(f"/v1/events/receipts/{receipt['receipt_id']}").json["results"]


def test_append_and_read_a_stream(alice):
    first = append(alice, "orders-1", "order.placed", "order.paid")
    assert first["first_version"] == 1 and first["last_version"] == 2
    assert first["positions"] == sorted(first["positions"])
    second = append(alice, "orders-1", "order.shipped", expected=2)
    assert second["first_version"] == 3
    items = alice.get("/v1/streams/orders-1/events").json["items"]
    assert [e["type"] for e in items] == ["order.placed", "order.paid", "order.shipped"]
    assert [e["version"] for e in items] == [1, 2, 3]
    page = alice.get("/v1/streams/orders-1/events?from_version=2&limit=1").json
    assert [e["version"] for e in page["items"]] == [2] and page["next_cursor"] == "3"


@pytest.mark.parametrize("url", ["/v1/streams/pages/events", "/v1/jobs/{job}/events"])
def test_event_lists_page_by_cursor_like_every_list(alice, url):
    append(alice, "pages", "a", "b", "c", "d", "e")
    job = alice.submit(alice.create_agent()["id"])["id"]
    url = url.format(job=job)
    seen = [e["version"] for e in every_item(alice, url, limit=2)]
    assert seen == [e["version"] for e in alice.get(url).json["items"]]
    assert seen[0] == 1 and len(seen) >= 1
    both = alice.get(f"{url}?cursor=2&from_version=2")
    assert both.status_code == 422 and "not both" in both.json["detail"]
    for bad in ("0", "x", "²", str(2**31)):
        response = alice.get(f"{url}?cursor={bad}")
        assert response.status_code == 422
        assert [e["field"] for e in response.json["errors"]] == ["cursor"]


def test_expected_version_conflict_is_409_with_the_current_version(alice):
    append(alice, "s", "a", "b")
    conflict = append(alice, "s", "c", expected=1, status=409)
    assert conflict["current_version"] == 2
    assert conflict["type"] == "/problems/wrong-expected-version"
    assert append(alice, "s", "c", expected="no_stream", status=409)["current_version"] == 2
    assert append(alice, "new-stream", "x", expected="no_stream")["first_version"] == 1
    assert len(alice.get("/v1/streams/s/events").json["items"]) == 2


def test_an_expected_version_on_a_stream_that_does_not_exist_is_409_and_writes_nothing(alice):
    assert append(alice, "absent", "a", expected=3, status=409)["current_version"] == 0
    assert alice.get("/v1/streams/absent/events").json["items"] == []
    # The refused append leaves nothing that stops the stream's first real one.
    created = append(alice, "absent", "a", "b", "c", expected="no_stream")
    assert (created["first_version"], created["last_version"]) == (1, 3)
    assert append(alice, "absent", "d", expected=3)["first_version"] == 4
    versions = [e["version"] for e in alice.get("/v1/streams/absent/events").json["items"]]
    assert versions == [1, 2, 3, 4]


def test_same_event_ids_again_write_nothing_and_answer_as_before(alice):
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    first = append(alice, "idem", "a", "b", ids=ids)
    again = append(alice, "idem", "a", "b", ids=ids, expected=0)
    assert again == first
    assert len(alice.get("/v1/streams/idem/events").json["items"]) == 2


def test_reusing_some_event_ids_in_another_request_is_409(alice):
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    append(alice, "idem2", "a", ids=ids[:1])
    assert (
        append(alice, "idem2", "a", "b", ids=ids, status=409)["type"]
        == "/problems/duplicate-event-ids"
    )
    assert append(alice, "other", "a", ids=ids[:1], status=409)


def test_the_same_ids_with_another_body_or_in_another_order_are_409(alice):
    """Ids alone decided: a different body got the first answer (its data thrown away
    unsaid), the same ids swapped got first_version 2 and last_version 1."""
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    events = [
        {"type": "a", "data": {"n": 0}, "event_id": ids[0]},
        {"type": "b", "data": {"n": 1}, "event_id": ids[1]},
    ]
    url = "/v1/streams/idem3/events"
    first = alice.post(url, json={"events": events}).json
    changed = [
        [events[1], events[0]],
        [{**events[0], "data": {"n": 99}}, events[1]],
        [{**events[0], "type": "other"}, events[1]],
        [{**events[0], "metadata": {"m": 1}}, events[1]],
    ]
    for body in changed:
        answer = alice.post(url, json={"events": body})
        assert answer.status_code == 409, body
        assert answer.json["type"] == "/problems/duplicate-event-ids"
    # The same events again, data keys in another order: the same request.
    same = [{**events[0], "data": {"n": 0}}, events[1]]
    assert alice.post(url, json={"events": same}).json == first
    assert [e["data"] for e in alice.get(url).json["items"]] == [{"n": 0}, {"n": 1}]


@pytest.mark.parametrize("stream", ["job-123", "document-abc"])
def test_server_streams_cannot_be_written_by_clients(alice, stream):
    body = append(alice, stream, "forged", status=422)
    assert body["errors"][0]["field"] == "stream"


@pytest.mark.parametrize("stream", ["has space", "x" * 201, "emoji-\u2603", ".", "..", "..."])
def test_bad_stream_names_are_422(alice, stream):
    """Only dots were valid, but `/v1/streams/../events` reaches `/v1/events` from most
    clients: a read of it answered the owner's whole feed."""
    response = alice.post(
        f"/v1/streams/{stream}/events", json={"events": [{"type": "a", "data": {}}]}
    )
    assert response.status_code in (404, 422)
    assert response.mimetype == "application/problem+json"
    batch = alice.post("/v1/events/batch", json={"events": [{"stream": stream, "type": "a"}]})
    assert batch.status_code == 422


@pytest.mark.parametrize("stream", [".a", "a..b", "x" * 200, "a:b-c_d.e"])
def test_stream_names_with_dots_and_more_are_fine(alice, stream):
    append(alice, stream, "a")


def test_event_limits(alice, app):
    limit = app.extensions["conveyor"].settings.event_max_data_bytes
    big = {"events": [{"type": "a", "data": {"blob": "x" * limit}}]}
    assert alice.post("/v1/streams/big/events", json=big).status_code == 422
    assert alice.post("/v1/streams/big/events", json={"events": []}).status_code == 422
    bad_type = {"events": [{"type": "has space", "data": {}}]}
    assert alice.post("/v1/streams/big/events", json=bad_type).status_code == 422
    extra = {"events": [{"type": "a", "data": {}, "version": 7}]}
    assert alice.post("/v1/streams/big/events", json=extra).status_code == 422
    assert alice.get("/v1/streams/big/events").json["items"] == []


def test_streams_are_private(alice, bob):
    append(alice, "secret", "a")
    assert bob.get("/v1/streams/secret/events").json["items"] == []
    # Bob's stream of the same name is his own, from version 1.
    assert append(bob, "secret", "b")["first_version"] == 1
    assert len(alice.get("/v1/streams/secret/events").json["items"]) == 1


def test_batch_is_accepted_then_persisted_with_results(alice, session):
    events = [
        {"stream": "b-1", "type": "t", "data": {"i": 0}},
        {"stream": "b-2", "type": "t", "data": {"i": 1}},
        {"stream": "b-1", "type": "t", "data": {"i": 2}},
    ]
    response = alice.post("/v1/events/batch", json={"events": events})
    assert response.status_code == 202
    receipt = response.json
    assert receipt["status"] == "pending" and receipt["results"] is None
    url = response.headers["Location"]
    assert url == f"/v1/events/receipts/{receipt['receipt_id']}"

    assert event_batches.persist(session, uuid.UUID(receipt["receipt_id"])) == "persisted"
    assert event_batches.persist(session, uuid.UUID(receipt["receipt_id"])) is None
    done = alice.get(url).json
    assert done["status"] == "persisted" and done["persisted_at"]
    assert [(r["stream"], r["version"], r["status"]) for r in done["results"]] == [
        ("b-1", 1, "persisted"),
        ("b-2", 1, "persisted"),
        ("b-1", 2, "persisted"),
    ]
    stream = alice.get("/v1/streams/b-1/events").json["items"]
    assert [e["data"]["i"] for e in stream] == [0, 2]
    assert [e["position"] for e in stream] == [
        done["results"][0]["position"],
        done["results"][2]["position"],
    ]


def test_batch_events_already_appended_are_duplicates_not_copies(alice, session):
    event_id = str(uuid.uuid4())
    append(alice, "dup", "t", ids=[event_id])
    body = {"events": [{"stream": "dup", "type": "t", "data": {"n": 0}, "event_id": event_id}]}
    receipt = alice.post("/v1/events/batch", json=body).json
    event_batches.persist(session, uuid.UUID(receipt["receipt_id"]))
    done = alice.get(f"/v1/events/receipts/{receipt['receipt_id']}").json
    assert done["status"] == "persisted" and done["results"][0]["status"] == "duplicate"
    assert len(alice.get("/v1/streams/dup/events").json["items"]) == 1


@pytest.mark.parametrize(
    "change", [{"data": {"v": 2}}, {"type": "other"}, {"metadata": {"m": 1}}], ids=str
)
def test_a_batch_reusing_an_id_with_another_body_is_rejected_not_a_duplicate(
    alice, session, change
):
    """An appended event's id sent again in a batch with another type, data or metadata
    was a "duplicate": the batch persisted, the new body thrown away unsaid. A single
    append answers the same thing with 409."""
    event_id = str(uuid.uuid4())
    original = {"type": "t", "data": {"v": 1}, "event_id": event_id}
    assert alice.post("/v1/streams/dup2/events", json={"events": [original]}).status_code == 201
    changed = {**original, **change}
    assert alice.post("/v1/streams/dup2/events", json={"events": [changed]}).status_code == 409
    body = {
        "events": [
            {"stream": "dup2-fresh", "type": "t", "data": {}},
            {"stream": "dup2", **changed},
        ]
    }
    results = persisted_results(alice, session, body, "rejected")
    assert [r["status"] for r in results] == ["not_persisted", "rejected"]
    assert "another type, data or metadata" in results[1]["reason"]
    assert alice.get("/v1/streams/dup2-fresh/events").json["items"] == []
    # The same body again (data keys in another order) is still a duplicate.
    same = {"events": [{"stream": "dup2", **original, "data": {"v": 1}}]}
    results = persisted_results(alice, session, same, "persisted")
    assert results[0]["status"] == "duplicate"
    assert [e["data"] for e in alice.get("/v1/streams/dup2/events").json["items"]] == [{"v": 1}]


def test_an_id_the_server_made_for_a_batch_is_found_when_a_client_sends_it(alice, session):
    """Ids the server makes are no longer looked up when their batch is persisted; sent
    back by a client (from a receipt), they are."""
    first = alice.post(
        "/v1/events/batch", json={"events": [{"stream": "made", "type": "t", "data": {}}]}
    )
    event_batches.persist(session, uuid.UUID(first.json["receipt_id"]))
    receipt = alice.get(f"/v1/events/receipts/{first.json['receipt_id']}").json
    made = receipt["results"][0]["event_id"]
    again = {"events": [{"stream": "made", "type": "t", "data": {}, "event_id": made}]}
    second = alice.post("/v1/events/batch", json=again).json
    assert event_batches.persist(session, uuid.UUID(second["receipt_id"])) == "persisted"
    done = alice.get(f"/v1/events/receipts/{second['receipt_id']}").json
    assert done["results"][0]["status"] == "duplicate"
    assert len(alice.get("/v1/streams/made/events").json["items"]) == 1


def test_a_batch_with_a_conflicting_event_is_rejected_whole(alice, session):
    event_id = str(uuid.uuid4())
    append(alice, "elsewhere", "t", ids=[event_id])
    body = {
        "events": [
            {"stream": "fresh", "type": "t", "data": {}},
            {"stream": "other", "type": "t", "data": {}, "event_id": event_id},
        ]
    }
    results = persisted_results(alice, session, body, "rejected")
    assert [r["status"] for r in results] == ["not_persisted", "rejected"]
    assert "elsewhere" in results[1]["reason"]
    assert alice.get("/v1/streams/fresh/events").json["items"] == []


def test_every_result_of_a_rejected_batch_names_its_stream(alice, session):
    """The rejected events' results had none (the others', persisted or not, had theirs):
    a client reading the receipt could not tell which stream an event was meant for."""
    taken, other = str(uuid.uuid4()), str(uuid.uuid4())
    append(alice, "elsewhere", "t", "u", ids=[taken, other])
    body = {
        "events": [
            {"stream": "fresh", "type": "t", "data": {}},
            {"stream": "other", "type": "t", "data": {}, "event_id": taken},
            {"stream": "elsewhere", "type": "changed", "data": {}, "event_id": other},
        ]
    }
    results = persisted_results(alice, session, body, "rejected")
    assert [(r["status"], r["stream"]) for r in results] == [
        ("not_persisted", "fresh"),
        ("rejected", "other"),
        ("rejected", "elsewhere"),
    ]


def test_batch_limits(alice):
    too_many = {"events": [{"stream": "s", "type": "t", "data": {}}] * 1001}
    assert alice.post("/v1/events/batch", json=too_many).status_code == 422
    reserved = {
        "events": [
            {"stream": "fine", "type": "t", "data": {}},
            {"stream": "job-x", "type": "t", "data": {}},
        ]
    }
    refused = alice.post("/v1/events/batch", json=reserved)
    assert refused.status_code == 422
    # It named the path's `stream`, which a batch has not.
    assert refused.json["errors"][0] | {"detail": ""} == {
        "field": "events.1.stream",
        "location": "body",
        "detail": "",
    }
    assert alice.post("/v1/events/batch", json={"events": []}).status_code == 422


def test_numbers_beyond_64_bit_integers_read_back_as_they_were_sent(alice):
    """PostgreSQL prints 1e300 in jsonb as 301 digits. The app reads them with orjson, a
    float again; the tests' engine read them with the json module, as an integer that
    orjson cannot write: the stream answered 500 in the tests only."""
    data = {"big": 1e300, "larger_than_u64": 1e20, "small": 1.5e-300}
    append_body = {"events": [{"type": "t", "data": data}]}
    assert alice.post("/v1/streams/floats/events", json=append_body).status_code == 201
    read = alice.get("/v1/streams/floats/events")
    assert read.status_code == 200, read.json
    assert read.json["items"][0]["data"] == data


def batch_refusals(client, streams, *, oversized, limit):
    """The fields a batch's 422 names: one event per stream, the `oversized`-th with data
    past `limit`."""
    events = [{"stream": stream, "type": "t", "data": {}} for stream in streams]
    events[oversized]["data"] = {"blob": "x" * limit}
    refused = client.post("/v1/events/batch", json={"events": events})
    assert refused.status_code == 422, refused.json
    assert all(e["location"] == "body" for e in refused.json["errors"])
    return [e["field"] for e in refused.json["errors"]]


def test_a_batch_refused_names_every_event_that_is_wrong_not_only_the_first(alice, app):
    """The 422 named the first reserved stream and stopped: a client fixing its batch met
    the next one only on its next try (and an oversized event's data only after every
    stream was right), where the body's other field errors all come at once."""
    limit = app.extensions["conveyor"].settings.event_max_data_bytes
    streams = ["job-1", "fine", "document-2", "fine"]
    assert batch_refusals(alice, streams, oversized=3, limit=limit) == [
        "events.0.stream",
        "events.2.stream",
        "events.3.data",
    ]


def test_a_batch_names_malformed_streams_with_the_reserved_and_the_oversized(alice, app):
    """A name of the wrong shape was the schema's error, which came alone: the reserved
    streams and oversized data of the other events waited for the next try."""
    limit = app.extensions["conveyor"].settings.event_max_data_bytes
    streams = ["..", "job-1", "a b", "fine", "x" * 201, ""]
    assert batch_refusals(alice, streams, oversized=3, limit=limit) == [
        "events.0.stream",
        "events.1.stream",
        "events.2.stream",
        "events.4.stream",
        "events.5.stream",
        "events.3.data",
    ]


def test_receipts_are_private(alice, bob):
    receipt = alice.post(
        "/v1/events/batch", json={"events": [{"stream": "s", "type": "t", "data": {}}]}
    ).json
    assert bob.get(f"/v1/events/receipts/{receipt['receipt_id']}").status_code == 404


def test_feed_cursor_must_be_the_owners(alice, bob):
    first = append(alice, "mine", "a")
    response = bob.get(f"/v1/events?after={first['positions'][0]}")
    assert response.status_code == 422
    assert response.json["errors"][0]["field"] == "after"


def test_one_event_id_twice_in_a_request_is_422_and_writes_nothing(alice):
    event_id = str(uuid.uuid4())
    problem = append(alice, "twice", "a", "b", ids=[event_id, event_id], status=422)
    assert problem["errors"][0]["field"] == "events.1.event_id"
    assert alice.get("/v1/streams/twice/events").json["items"] == []
    batch = {
        "events": [{"stream": s, "type": "t", "data": {}, "event_id": event_id} for s in ("x", "y")]
    }
    response = alice.post("/v1/events/batch", json=batch)
    assert response.status_code == 422, response.json
    assert response.json["errors"][0]["field"] == "events.1.event_id"


@pytest.mark.parametrize("expected", [True, "1", 1.0, "2", None])
def test_expected_version_is_a_number_any_or_no_stream_and_nothing_else(alice, expected):
    """`true`, "1" and 1.0 were read as version 1."""
    append(alice, "strict", "a")
    url = "/v1/streams/strict/events"
    answer = alice.post(
        url, json={"events": [{"type": "b", "data": {}}], "expected_version": expected}
    )
    assert answer.status_code == 422, answer.json
    assert answer.json["errors"][0]["field"].startswith("expected_version")
    assert len(alice.get(url).json["items"]) == 1


@pytest.mark.parametrize(
    ("stored", "sent"),
    [({"flag": 1}, {"flag": True}), ({"n": [0]}, {"n": [False]}), ({"f": True}, {"f": 1.0})],
    ids=str,
)
@pytest.mark.parametrize("field", ["data", "metadata"])
def test_a_retry_with_a_boolean_where_a_number_was_is_a_conflict(
    alice, session, field, stored, sent
):
    """The replay check compared bodies with Python's `==`, where `True == 1` and
    `False == 0.0`: a retry that sent `true` for `1` was taken for the same event, answered
    as the first request, and its body thrown away unsaid. A batch made it a `duplicate`."""
    url = f"/v1/streams/bools-{field}/events"
    original = {"type": "t", "data": {}, "event_id": str(uuid.uuid4()), field: stored}
    assert alice.post(url, json={"events": [original]}).status_code == 201
    retry = {**original, field: sent}
    answer = alice.post(url, json={"events": [retry]})
    assert answer.status_code == 409, answer.json
    assert answer.json["type"] == "/problems/duplicate-event-ids"
    batch = {"events": [{"stream": f"bools-{field}", **retry}]}
    results = persisted_results(alice, session, batch, "rejected")
    assert "another type, data or metadata" in results[0]["reason"]
    assert [e[field] for e in alice.get(url).json["items"]] == [stored]
    # A number written another way is still the same number: 1.0 is 1 in JSON.
    if stored == {"flag": 1}:
        same = {**original, field: {"flag": 1.0}}
        assert alice.post(url, json={"events": [same]}).status_code == 201


@pytest.mark.parametrize(
    "types",
    [
        "job.succeeded|job.failed",  # another separator: one "type" no event can have
        "order placed",
        "order.placed,é",
        "x" * 201,
        ",",  # names no type, and was read as no filter: the whole feed
        "",
    ],
)
def test_a_feed_type_filter_that_names_no_possible_type_is_422(alice, types):
    """It matched nothing, and an empty page is what a quiet feed answers too: a client
    that mistyped its filter waited for events that could never come. Each
    comma-separated type is held to the pattern an event's type is written with."""
    append(alice, "typed", "job.succeeded")
    for live in ({}, {"Accept": "text/event-stream"}):
        refused = alice.get("/v1/events", query_string={"type": types}, headers=live)
        assert refused.status_code == 422, refused.data
        assert refused.mimetype == "application/problem+json"
        assert [e["field"] for e in refused.json["errors"]] == ["type"]


def test_a_feed_type_filter_takes_spaces_around_and_empty_items_between_types(alice):
    for types in ("job.succeeded, order.placed", "a,,b", "order.placed,", "a/b:c-d_e.f"):
        answered = alice.get("/v1/events", query_string={"type": types})
        assert answered.status_code == 200, (types, answered.json)


@pytest.mark.parametrize("outcome", ["persisted", "rejected"])
def test_a_decided_batch_keeps_its_receipt_and_lets_go_of_its_events(alice, session, outcome):
    """A batch's events wait in its row only until a worker decides it: then they are in
    the log, or refused. The row kept a second copy of every batched event (up to 2 MB a
    batch) for as long as the database lived, which no receipt ever showed."""
    taken = str(uuid.uuid4())
    if outcome == "rejected":
        append(alice, "elsewhere", "t", ids=[taken])
    body = {
        "events": [
            {"stream": "kept", "type": "t", "data": {"blob": "x" * 1000}},
            {"stream": "kept", "type": "t", "data": {}, "event_id": taken},
        ]
    }
    receipt_id = uuid.UUID(alice.post("/v1/events/batch", json=body).json["receipt_id"])
    assert event_batches.persist(session, receipt_id) == outcome
    receipt = alice.get(f"/v1/events/receipts/{receipt_id}").json
    assert receipt["status"] == outcome
    assert [r["stream"] for r in receipt["results"]] == ["kept", "kept"]
    assert session.get(EventBatch, receipt_id, populate_existing=True).events == []
    assert event_batches.persist(session, receipt_id) is None  # decided once
