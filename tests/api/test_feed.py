"""The owner's feed and live tails, on a database whose transactions really commit: the feed
serves only events of finished transactions, which a rolled-back test transaction never is.

The feed also holds events back while any older writing transaction is open anywhere on the
server (other tests' transactions included), so reads poll until what was written shows.
"""

import json
import threading
import time
import uuid
from contextlib import contextmanager
from functools import partial

import pytest
import sqlalchemy

from api import create_app
from tests.conftest import FAST_PASSWORDS
from tests.helpers import AuthClient, poll


@pytest.fixture
def committed_app(settings):
    settings.max_stream_s = 10
    app = create_app(settings, passwords=FAST_PASSWORDS)
    yield app
    app.extensions["conveyor"].notifier.close()
    app.extensions["conveyor"].engine.dispose()


@pytest.fixture
def carol(committed_app):
    return AuthClient.register(
        committed_app.test_client(), f"carol-{uuid.uuid4().hex[:8]}@example.com"
    )


def append(client, stream, *types):
    body = {"events": [{"type": t, "data": {"t": t}} for t in types]}
    response = client.post(f"/v1/streams/{stream}/events", json=body)
    assert response.status_code == 201, response.json
    return response.json


def feed_shows(client, count, query=""):
    """Wait until the feed serves `count` events, then return them."""
    return poll(
        lambda: (
            (items := client.get(f"/v1/events?limit=1000{query}").json["items"])
            and len(items) >= count
            and items
        ),
        timeout=15,
    )


def test_feed_pages_every_event_once_in_order(carol):
    append(carol, "a", "a.1", "a.2")
    append(carol, "b", "b.1")
    append(carol, "a", "a.3")
    feed_shows(carol, 4)
    first = carol.get("/v1/events?limit=2").json
    rest = carol.get(f"/v1/events?after={first['next_cursor']}").json
    types = [e["type"] for page in (first, rest) for e in page["items"]]
    assert types == ["a.1", "a.2", "b.1", "a.3"]
    last = carol.get(f"/v1/events?after={rest['next_cursor']}").json
    assert last == {"items": [], "next_cursor": None}


def test_feed_pages_by_cursor_as_every_list_does(carol):
    """`cursor` was refused as an unknown parameter: a client paging every list by it could
    not walk the feed."""
    append(carol, "a", "a.1", "a.2", "a.3")
    feed_shows(carol, 3)
    first = carol.get("/v1/events?limit=2").json
    rest = carol.get(f"/v1/events?cursor={first['next_cursor']}").json
    assert [e["type"] for e in rest["items"]] == ["a.3"]
    for bad in ("cursor=x", "cursor=-1", "cursor=1&after=1"):
        assert carol.get(f"/v1/events?{bad}").status_code == 422, bad


def test_feed_filters_by_type(carol):
    append(carol, "a", "keep", "drop", "keep", "other")
    items = feed_shows(carol, 3, "&type=keep,other")
    assert [e["type"] for e in items] == ["keep", "keep", "other"]


def test_feed_includes_job_events_and_is_private(carol, committed_app):
    agent = carol.create_agent()
    carol.submit(agent["id"])
    dave = AuthClient.register(
        committed_app.test_client(), f"dave-{uuid.uuid4().hex[:8]}@example.com"
    )
    assert [e["type"] for e in feed_shows(carol, 1)] == ["job.queued"]
    assert dave.get("/v1/events").json["items"] == []


def frames(response, count, timeout=10.0):
    """Read `count` SSE frames from a streaming test response (a worker thread appends)."""
    got = []
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if fields:
                got.append(fields)
        if len(got) >= count:
            break
    response.close()
    return got


def tail_while(client, url, count, write, **headers):
    """Open a live tail of `url`, have a thread `write` 0.3 s later, and read `count` frames."""
    response = client.client.get(
        url, headers={**client.headers, "Accept": "text/event-stream", **headers}, buffered=False
    )
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    writer = threading.Timer(0.3, write)
    writer.start()
    got = frames(response, count)
    writer.join()
    return got


def test_live_feed_delivers_new_events_and_resumes(carol):
    append(carol, "live", "before")
    feed_shows(carol, 1)
    got = tail_while(carol, "/v1/events", 2, lambda: append(carol, "live", "after"))
    assert [f["event"] for f in got] == ["before", "after"]
    assert json.loads(got[1]["data"])["stream"] == "live"

    resumed = carol.client.get(
        "/v1/events",
        headers={**carol.headers, "Accept": "text/event-stream", "Last-Event-ID": got[0]["id"]},
        buffered=False,
    )
    append(carol, "live", "third")
    assert [f["event"] for f in frames(resumed, 2)] == ["after", "third"]


def test_a_live_feed_checks_the_cursor_it_was_given_once(carol, committed_app):
    """The position a tail starts from is the client's, and must be one of its feed's (a
    422 otherwise); the positions it goes on from are the feed's own. Every read of the
    tail, one per announcement, asked the database again whether its cursor was one."""
    checks = []

    def note_check(conn, cursor, statement, *_):
        if "EXISTS" in statement and "events.position =" in statement:
            checks.append(statement)

    engine = committed_app.extensions["conveyor"].engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", note_check)
    append(carol, "checked", "first")
    (first,) = feed_shows(carol, 1)
    for resume in ({"Last-Event-ID": str(first["position"])}, {}):
        checks.clear()
        query = "" if resume else f"?after={first['position']}"
        got = tail_while(
            carol,
            f"/v1/events{query}",
            2,
            lambda: append(carol, "checked", "more", "more"),
            **resume,
        )
        assert [f["event"] for f in got] == ["more", "more"]
        assert len(checks) == 1, checks


def test_live_stream_tail_follows_one_stream(carol):
    append(carol, "one", "x.1")
    append(carol, "two", "y.1")
    got = tail_while(
        carol,
        "/v1/streams/one/events",
        2,
        lambda: (append(carol, "two", "y.2"), append(carol, "one", "x.2")),
    )
    assert [(f["id"], f["event"]) for f in got] == [("1", "x.1"), ("2", "x.2")]


@pytest.fixture
def big_events(settings):
    """A user with eight events of ~1.5 KB each on stream `big`, on an app whose pages end
    at 4 KB (`PAGE_MAX_BYTES`): every third event reaches it. Streams close after 3 s."""
    settings.page_max_bytes = 4096
    with _big_events(settings) as user:
        yield user


@pytest.fixture
def big_events_live_pages(settings):
    """`big_events` with plain pages of 4 MB and live pages of 4 KB (`LIVE_PAGE_MAX_BYTES`),
    and for each page of events the app reads, as they are read, how many it has and how
    many it asked for (the query's limit, plus one to tell whether more follow)."""
    settings.live_page_max_bytes = 4096
    with _big_events(settings) as user:
        rows: list[int] = []
        engine = user.client.application.extensions["conveyor"].engine
        sqlalchemy.event.listen(engine, "after_cursor_execute", partial(_note_page, rows))
        yield user, rows


def _note_page(rows, conn, cursor, statement, parameters, *_):
    if "FROM events" in statement and "events.version >=" in statement:
        rows.append((cursor.rowcount, parameters["param_1"]))


@contextmanager
def _big_events(settings):
    settings.max_stream_s = 3
    app = create_app(settings, passwords=FAST_PASSWORDS)
    user = AuthClient.register(app.test_client(), f"pages-{uuid.uuid4().hex[:8]}@example.com")
    events = [{"type": "t", "data": {"text": f"{i}" + "x" * 1500}} for i in range(8)]
    assert user.post("/v1/streams/big/events", json={"events": events}).status_code == 201
    # Listening: a tail then waits for announcements, not the fallback poll's second.
    notifier = app.extensions["conveyor"].notifier
    with notifier.watch("listening"):
        poll(notifier.connected.is_set)
    try:
        yield user
    finally:
        app.extensions["conveyor"].notifier.close()
        app.extensions["conveyor"].engine.dispose()


def test_a_feed_page_ends_by_bytes_and_the_next_goes_on_from_its_last_event(big_events):
    page = poll(lambda: (found := big_events.get("/v1/events?limit=10").json)["items"] and found)
    assert [e["version"] for e in page["items"]] == [1, 2, 3]
    rest = big_events.get(f"/v1/events?limit=10&after={page['next_cursor']}").json
    assert [e["version"] for e in rest["items"]] == [4, 5, 6]


@pytest.mark.parametrize("url", ["/v1/events", "/v1/streams/big/events"])
def test_a_tail_reads_on_after_a_page_ended_by_bytes(big_events, url):
    """A page cut short by bytes is not the end of what there is: the tail reads the next
    at once, rather than waiting for a new event (the stream closes after 3 s, reading
    once more on its way out: a tail that waited would send two pages, not three)."""
    poll(lambda: big_events.get("/v1/events").json["items"])  # the feed shows the commit
    response = big_events.client.get(
        url, headers={**big_events.headers, "Accept": "text/event-stream"}, buffered=False
    )
    got = [json.loads(f["data"])["version"] for f in frames(response, 8)]
    assert got == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_tail_reads_smaller_pages_than_a_plain_read(big_events_live_pages):
    """A tail whose client does not read holds its page while its send waits: 36 of them,
    with pages of 4 MB, took the web to 365-394 MB. Plain pages stay as they were."""
    user, rows = big_events_live_pages
    assert len(user.get("/v1/streams/big/events?limit=10").json["items"]) == 8
    assert rows == [(8, 11)]
    rows.clear()
    response = user.client.get(
        "/v1/streams/big/events",
        headers={**user.headers, "Accept": "text/event-stream"},
        buffered=False,
    )
    assert len(frames(response, 8)) == 8
    # After the first page, a read asks for twice what the last one held (at least 16),
    # not 200: PostgreSQL sizes every row asked for.
    assert rows[:3] == [(3, 201), (3, 17), (2, 17)]


@pytest.mark.parametrize("url", ["/v1/events", "/v1/streams/quiet/events"])
def test_a_tail_with_nothing_to_send_yet_begins_at_once(carol, url):
    """A tail resumed at the end (or on a quiet stream) sent no byte until the first event
    or keepalive (15 s), and servers send the status line with the body's first bytes:
    gunicorn's client, as this test client, waited that long for its 200."""
    position = append(carol, "quiet", "only")["positions"][0]
    feed_shows(carol, 1)
    last_id = position if url == "/v1/events" else 1
    headers = {**carol.headers, "Accept": "text/event-stream", "Last-Event-ID": str(last_id)}
    started = time.monotonic()
    response = carol.client.get(url, headers=headers, buffered=False)
    try:
        # The stream lasts `max_stream_s` (10 s here); its first bytes must come at once.
        assert time.monotonic() - started < 5
        assert response.status_code == 200
        assert next(iter(response.response)).startswith(b":")  # a comment, no event
    finally:
        response.close()
