"""A stream read backwards, newest first (`direction=backward`): "the last ten events of
this stream" took a read of its version, then a page from ten below it, and the two reads
could see different streams."""

import pytest

from tests.helpers import every_item


def append(client, stream, count):
    body = {"events": [{"type": "t", "data": {"n": n}} for n in range(count)]}
    response = client.post(f"/v1/streams/{stream}/events", json=body)
    assert response.status_code == 201, response.json


def versions(page):
    return [event["version"] for event in page["items"]]


def test_backward_reads_from_the_last_event_newest_first(alice):
    append(alice, "back", 5)
    page = alice.get("/v1/streams/back/events?direction=backward&limit=2").json
    assert versions(page) == [5, 4] and page["next_cursor"] == "3"
    page = alice.get(f"/v1/streams/back/events?direction=backward&cursor={page['next_cursor']}")
    assert versions(page.json) == [3, 2, 1] and page.json["next_cursor"] is None
    walked = every_item(alice, "/v1/streams/back/events?direction=backward", limit=2)
    assert [event["version"] for event in walked] == [5, 4, 3, 2, 1]
    forward = alice.get("/v1/streams/back/events?direction=forward").json
    assert versions(forward) == [1, 2, 3, 4, 5]


def test_backward_from_a_version_starts_there(alice):
    append(alice, "back-from", 5)
    page = alice.get("/v1/streams/back-from/events?direction=backward&from_version=3").json
    assert versions(page) == [3, 2, 1]
    beyond = alice.get("/v1/streams/back-from/events?direction=backward&from_version=99").json
    assert versions(beyond) == [5, 4, 3, 2, 1]
    assert alice.get("/v1/streams/nothing/events?direction=backward").json == {
        "items": [],
        "next_cursor": None,
    }


def test_a_backward_walk_neither_skips_nor_repeats_while_the_stream_grows(alice):
    """Its cursor is the next version down: events appended meanwhile are above the first
    page, where a forward read or the next backward walk finds them."""
    append(alice, "growing", 4)
    seen = []
    cursor = ""
    while True:
        page = alice.get(f"/v1/streams/growing/events?direction=backward&limit=1{cursor}").json
        seen += versions(page)
        append(alice, "growing", 1)
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [4, 3, 2, 1]


@pytest.mark.parametrize("query", ["direction=sideways", "direction=", "direction=BACKWARD"])
def test_an_unknown_direction_is_422(alice, query):
    refused = alice.get(f"/v1/streams/s/events?{query}")
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json["errors"]] == ["direction"]


def test_a_live_tail_goes_forward_only(alice):
    append(alice, "tailed", 2)
    refused = alice.get(
        "/v1/streams/tailed/events?direction=backward", headers={"Accept": "text/event-stream"}
    )
    assert refused.status_code == 422
    assert refused.mimetype == "application/problem+json"
    assert [e["field"] for e in refused.json["errors"]] == ["direction"]
