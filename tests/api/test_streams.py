"""What a stream is at (`GET /v1/streams/<stream>`) and which streams a caller has
(`GET /v1/streams`), without reading their events."""

import re
import uuid

import pytest
from sqlalchemy import select, text

from models import User
from models.events import CLIENT_STREAM_NAMES
from services import event_batches, event_store, streams
from services.inputs import RESERVED_STREAM_PREFIXES
from tests.api.test_events import append
from tests.helpers import every_item

PROBLEM = "application/problem+json"


def info(client, stream, status=200, **headers):
    response = client.get(f"/v1/streams/{stream}", headers=headers)
    assert response.status_code == status, response.json
    return response


def names(client, query=""):
    return [s["stream"] for s in every_item(client, f"/v1/streams{query}", limit=2)]


def test_a_streams_version_follows_its_appends(alice):
    append(alice, "orders-1", "order.placed", "order.paid")
    first = info(alice, "orders-1")
    assert first.json["stream"] == "orders-1" and first.json["version"] == 2
    assert first.headers["ETag"] == '"2"'
    assert first.json["created_at"] <= first.json["updated_at"]
    append(alice, "orders-1", "order.shipped", expected=2)
    assert info(alice, "orders-1").json["version"] == 3


def test_the_version_is_an_etag_for_conditional_reads(alice):
    append(alice, "polled", "a", "b")
    unchanged = info(alice, "polled", 304, **{"If-None-Match": '"2"'})
    assert unchanged.data == b"" and unchanged.headers["ETag"] == '"2"'
    append(alice, "polled", "c")
    assert info(alice, "polled", **{"If-None-Match": '"2"'}).json["version"] == 3
    refused = info(alice, "polled", 412, **{"If-Match": '"2"'})
    assert refused.json["current_version"] == 3


def test_a_persisted_batch_moves_its_streams_versions(alice, session):
    append(alice, "cart-7", "cart.opened")
    events = [
        {"stream": "cart-7", "type": "item.added", "data": {}},
        {"stream": "cart-7", "type": "item.added", "data": {}},
        {"stream": "cart-8", "type": "cart.opened", "data": {}},
    ]
    receipt = alice.post("/v1/events/batch", json={"events": events}).json
    # Accepted is not appended: the stream stays where it was until a worker persists it.
    assert info(alice, "cart-7").json["version"] == 1
    info(alice, "cart-8", 404)
    assert event_batches.persist(session, uuid.UUID(receipt["receipt_id"])) == "persisted"
    assert info(alice, "cart-7").json["version"] == 3
    assert info(alice, "cart-8").json["version"] == 1
    assert names(alice, "?prefix=cart-") == ["cart-7", "cart-8"]


def _row_without_events(session, client, stream):
    """The row a refused first append leaves in production (autocommit; here its savepoint
    is rolled back) or a batch that locked the stream and was rejected: version 0."""
    owner_id = session.scalar(select(User.id).where(User.email == client.email))
    event_store.lock_streams(session, owner_id=owner_id, names=[stream])
    session.flush()


def test_no_stream_is_a_404_problem_and_a_row_without_events_is_none(alice, session):
    missing = info(alice, "never-written", 404)
    assert missing.mimetype == PROBLEM and missing.json["status"] == 404
    _row_without_events(session, alice, "refused")
    info(alice, "refused", 404)
    assert names(alice) == []
    append(alice, "refused", "a", expected="no_stream")
    assert info(alice, "refused").json["version"] == 1
    assert names(alice) == ["refused"]


@pytest.mark.parametrize("stream", ["..", "a*b", "x" * 201, "caf%C3%A9"])
def test_bad_stream_names_are_422(alice, stream):
    response = info(alice, stream, 422)
    assert response.mimetype == PROBLEM
    assert [e["field"] for e in response.json["errors"]] == ["stream"]


def test_another_users_streams_are_not_found_nor_listed(alice, bob):
    append(alice, "private", "a")
    info(bob, "private", 404)
    assert names(bob) == [] and names(alice) == ["private"]
    append(bob, "private", "b", "c")
    assert info(bob, "private").json["version"] == 2
    assert info(alice, "private").json["version"] == 1


def test_a_jobs_and_a_documents_streams_are_read_but_not_listed(alice):
    job = alice.submit(alice.create_agent()["id"])["id"]
    job_events = alice.get(f"/v1/jobs/{job}/events").json["items"]
    job_stream = info(alice, f"job-{job}").json
    assert job_stream["version"] == job_events[-1]["version"] >= 1
    assert job_stream["created_at"] == job_events[0]["recorded_at"]
    document = alice.post("/v1/documents", json={"title": "t", "content": "c"}).json
    assert alice.patch(f"/v1/documents/{document['id']}", json={"content": "d"}).status_code == 200
    assert info(alice, f"document-{document['id']}").json["version"] == 2
    append(alice, "mine", "a")
    # A document's stream keeps a row, as client streams do; the list still leaves it out.
    assert names(alice) == ["mine"]


def test_streams_page_by_name_under_a_prefix(alice):
    for stream in ("order-2", "order-10", "Order-1", "order_3", "orders", "order-1", "cart"):
        append(alice, stream, "x")
    # Byte order: upper case before lower, '-' before '_'; every page comes whole.
    assert names(alice) == [
        "Order-1",
        "cart",
        "order-1",
        "order-10",
        "order-2",
        "order_3",
        "orders",
    ]
    assert names(alice, "?prefix=order-") == ["order-1", "order-10", "order-2"]
    # `_` is a character of names, not a wildcard.
    assert names(alice, "?prefix=order_") == ["order_3"]
    assert names(alice, "?prefix=zzz") == []
    page = alice.get("/v1/streams?prefix=order&limit=2").json
    assert [s["stream"] for s in page["items"]] == ["order-1", "order-10"]
    assert page["next_cursor"] == "order-10"
    after = alice.get("/v1/streams?prefix=order&limit=2&cursor=order-10").json
    assert [s["stream"] for s in after["items"]] == ["order-2", "order_3"]


def test_a_listed_stream_reads_as_it_does_alone(alice, session):
    _row_without_events(session, alice, "first-refused")
    # Made an hour before the stream's first event (a test's requests share one
    # transaction, and so one now()): the stream was created by its first event.
    session.execute(
        text("UPDATE streams SET created_at = created_at - interval '1 hour' WHERE name = :n"),
        {"n": "first-refused"},
    )
    append(alice, "first-refused", "a", "b")
    append(alice, "other", "a")
    listed = alice.get("/v1/streams").json["items"]
    assert [s["stream"] for s in listed] == ["first-refused", "other"]
    first_event = alice.get("/v1/streams/first-refused/events").json["items"][0]
    assert listed[0]["created_at"] == first_event["recorded_at"]
    for stream in listed:
        assert stream == info(alice, stream["stream"]).json


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("cursor=not%20a%20name", "cursor"),
        ("cursor=..", "cursor"),
        ("cursor=" + "x" * 201, "cursor"),
        ("cursor=job-1", "cursor"),  # server-written streams are never a page's last name
        ("prefix=ord&cursor=cart", "cursor"),  # another listing's
        ("prefix=", "prefix"),
        ("prefix=a%2Fb", "prefix"),
        ("prefix=job-", "prefix"),
        ("prefix=document-12", "prefix"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("order=name", "order"),
    ],
)
def test_tampered_cursors_and_bad_filters_are_422(alice, query, field):
    append(alice, "order-1", "x")
    response = alice.get(f"/v1/streams?{query}")
    assert response.status_code == 422, response.json
    assert response.mimetype == PROBLEM
    assert [e["field"] for e in response.json["errors"]] == [field]


def test_a_prefix_that_only_looks_reserved_is_fine(alice):
    append(alice, "jobs-queue", "x")
    append(alice, "documents", "x")
    assert names(alice, "?prefix=job") == ["jobs-queue"]
    assert names(alice, "?prefix=document") == ["documents"]


def test_the_listed_streams_are_the_ones_the_index_holds():
    """The index's predicate (migration 0013, models/events.py) names every reserved prefix:
    a reserved stream outside it would be listed, from a partial list of rows."""
    excluded = re.findall(r"name NOT LIKE '([^%']+)%'", CLIENT_STREAM_NAMES)
    assert sorted(excluded) == sorted(RESERVED_STREAM_PREFIXES)


@pytest.mark.parametrize("prefix", [None, "order-"])
def test_a_page_is_one_range_scan_of_the_client_names_index(session, prefix):
    """Without a sort to fall back on, only an index in the names' byte order whose
    predicate the query implies can give the order: the primary key's is the database's
    collation, and a query that no longer repeated the predicate could not use this one."""
    query = streams.list_query(owner_id=uuid.uuid4(), limit=51, cursor="cart-9", prefix=prefix)
    compiled = query.compile(dialect=session.get_bind().dialect)
    session.execute(text("SET LOCAL enable_sort = off"))
    plan = "\n".join(
        row[0]
        for row in session.connection().exec_driver_sql("EXPLAIN " + str(compiled), compiled.params)
    )
    assert "Sort" not in plan, plan
    # The cursor and the prefix bound the scan: they are not filters of the owner's rows.
    scan = plan.split("Index Scan using ix_streams_client_names on streams", 1)[1]
    bounds = scan.split("Index Cond:", 1)[1].split("\n", 1)[0]
    assert "> 'cart-9'" in bounds, plan
    if prefix:
        assert ">= 'order-'" in bounds and "< 'order-{'" in bounds, plan
