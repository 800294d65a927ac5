"""Owner isolation, proven on every route of the URL map.

Alice owns one of everything. Bob, with his own token or his own API key, aims every route
at Alice's things: a route with an id answers 404 (the same problem as for an id that does
not exist) and changes nothing of Alice's, a list never shows her rows, and a route that
names a stream works in Bob's own namespace only.

`ROUTES` classifies every (method, rule) of the app. A route that is not in it, or an entry
whose route is gone, fails `test_every_route_is_in_the_matrix`: a new route is covered the
day it lands, or the suite says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from api import create_app
from models import Base
from tests.conftest import FAST_PASSWORDS
from tests.helpers import AuthClient, poll
from tests.security.support import new_key, one_of_everything, send


@dataclass(frozen=True)
class World:
    """Alice's things, by the names the URL map gives their ids."""

    ids: dict[str, str]
    user_id: str


Body = Callable[[World], Any] | None


@dataclass(frozen=True)
class Owned:
    """A route on one of Alice's things: 404 for Bob, and nothing changes."""

    body: Body = None
    query: str = ""
    bearer_only: bool = False  # an API key gets 401 before ownership is even looked at


@dataclass(frozen=True)
class Listing:
    """A list: Bob's never holds Alice's rows; `shows` names the world ids hers holds."""

    shows: tuple[str, ...]
    bearer_only: bool = False
    key: str = "id"  # the item field that names a row (a stream's is its name)
    # The feed serves committed events only, which a rolled-back test transaction never
    # holds: it has its own test on a committed database.
    committed_only: bool = False


@dataclass(frozen=True)
class Namespaced:
    """A route that names a thing per owner (a stream): Bob gets his own, empty one."""

    status: int
    body: Body = None


@dataclass(frozen=True)
class Unowned:
    """Not about an existing thing of anyone's; `why` says what covers it instead."""

    why: str
    body: Body = None
    status: int | None = None  # when set: what Bob gets when the body names Alice's things


Entry = Owned | Listing | Namespaced | Unowned


def _doc_body(_: World) -> dict[str, Any]:
    return {"title": "mine now", "content": "stolen"}


ROUTES: dict[tuple[str, str], Entry] = {
    # Authentication and API keys
    ("POST", "/v1/auth/register"): Unowned("creates a new account; tests/api/test_auth.py"),
    ("POST", "/v1/auth/login"): Unowned("credentials, not ids; test_rate_limits.py"),
    ("POST", "/v1/auth/refresh"): Unowned("the token is the subject; test_tokens.py"),
    ("POST", "/v1/auth/logout"): Unowned(
        "revokes only the caller's own tokens; tests/api/test_auth.py"
    ),
    ("GET", "/v1/auth/me"): Unowned("the caller's own account; test_self_routes_show_the_caller"),
    ("POST", "/v1/api-keys"): Unowned("creates the caller's key; tests/api/test_api_keys.py"),
    ("GET", "/v1/api-keys"): Listing(shows=("key_id",), bearer_only=True),
    ("GET", "/v1/api-keys/<uuid:key_id>"): Owned(bearer_only=True),
    ("DELETE", "/v1/api-keys/<uuid:key_id>"): Owned(bearer_only=True),
    # Agents
    ("POST", "/v1/agents"): Unowned("creates the caller's agent"),
    ("GET", "/v1/agents"): Listing(shows=("agent_id",)),
    ("GET", "/v1/agents/<uuid:agent_id>"): Owned(),
    ("PATCH", "/v1/agents/<uuid:agent_id>"): Owned(body=lambda _: {"name": "stolen"}),
    ("DELETE", "/v1/agents/<uuid:agent_id>"): Owned(),
    # Jobs
    ("POST", "/v1/jobs"): Unowned(
        "Alice's agent is unknown to Bob",
        body=lambda w: {"agent_id": w.ids["agent_id"], "input": {"text": "x"}},
        status=422,
    ),
    ("GET", "/v1/jobs"): Listing(shows=("job_id",)),
    ("GET", "/v1/jobs/<uuid:job_id>"): Owned(),
    ("GET", "/v1/jobs/<uuid:job_id>/events"): Owned(),
    ("POST", "/v1/jobs/<uuid:job_id>/cancel"): Owned(),
    ("POST", "/v1/jobs/<uuid:job_id>/retry"): Owned(),
    # Documents
    ("POST", "/v1/documents"): Unowned("creates the caller's document"),
    ("GET", "/v1/documents"): Listing(shows=("document_id",)),
    ("GET", "/v1/documents/<uuid:document_id>"): Owned(query="?version=1"),
    ("PUT", "/v1/documents/<uuid:document_id>"): Owned(body=_doc_body),
    ("PATCH", "/v1/documents/<uuid:document_id>"): Owned(body=lambda _: {"title": "mine now"}),
    ("DELETE", "/v1/documents/<uuid:document_id>"): Owned(),
    ("GET", "/v1/documents/<uuid:document_id>/versions"): Owned(),
    # Events
    ("GET", "/v1/events"): Listing(shows=(), committed_only=True),
    ("POST", "/v1/events/batch"): Unowned("appends to the caller's own streams"),
    ("GET", "/v1/events/receipts/<uuid:receipt_id>"): Owned(),
    ("GET", "/v1/streams"): Listing(shows=("stream",), key="stream"),
    ("GET", "/v1/streams/<stream>"): Namespaced(404),  # Bob has no stream of that name
    ("GET", "/v1/streams/<stream>/events"): Namespaced(200),
    ("POST", "/v1/streams/<stream>/events"): Namespaced(
        201,  # "no_stream" holds for Bob: Alice's stream of the same name is not his
        body=lambda _: {"expected_version": "no_stream", "events": [{"type": "t", "data": {}}]},
    ),
    # Webhooks
    ("POST", "/v1/webhooks"): Unowned("creates the caller's endpoint"),
    ("GET", "/v1/webhooks"): Listing(shows=("endpoint_id",)),
    ("GET", "/v1/webhooks/callback-secret"): Unowned(
        "the caller's own secret; test_self_routes_show_the_caller"
    ),
    ("GET", "/v1/webhooks/<uuid:endpoint_id>"): Owned(),
    ("PATCH", "/v1/webhooks/<uuid:endpoint_id>"): Owned(body=lambda _: {"enabled": False}),
    ("DELETE", "/v1/webhooks/<uuid:endpoint_id>"): Owned(),
    ("POST", "/v1/webhooks/<uuid:endpoint_id>/rotate-secret"): Owned(),
    ("GET", "/v1/webhooks/<uuid:endpoint_id>/deliveries"): Owned(),
    ("GET", "/v1/deliveries"): Listing(shows=("delivery_id",)),
    ("GET", "/v1/deliveries/<uuid:delivery_id>"): Owned(),
    ("POST", "/v1/deliveries/<uuid:delivery_id>/redeliver"): Owned(),
    # Outside /v1: no owner's data.
    ("GET", "/healthz"): Unowned("liveness"),
    ("GET", "/readyz"): Unowned("readiness"),
    ("GET", "/metrics"): Unowned("process metrics, no owner's data"),
    ("GET", "/openapi.json"): Unowned("the API description"),
    ("GET", "/docs"): Unowned("the API description"),
    ("GET", "/docs/oauth2-redirect"): Unowned("Swagger UI"),
    ("GET", "/static/<path:filename>"): Unowned("Swagger UI's files"),
}


def _routes(app: Any) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def _by_kind(kind: type) -> list[tuple[str, str]]:
    return sorted(key for key, entry in ROUTES.items() if isinstance(entry, kind))


# --------------------------------------------------------------------------- the world


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})


@pytest.fixture
def world(alice: AuthClient, session: Session) -> World:
    user_id, ids = one_of_everything(alice, session)
    return World(ids=ids, user_id=user_id)


@pytest.fixture(params=["token", "api key"])
def intruder(request, bob: AuthClient) -> tuple[str, AuthClient]:  # type: ignore[no-untyped-def]
    return request.param, (bob if request.param == "token" else new_key(bob))


def fingerprint(session: Session, owner_id: str) -> dict[str, str]:
    """A digest of every row of Alice's in every table (and of tables without owners):
    any insert, update or delete shows."""
    digests = {}
    for table in Base.metadata.sorted_tables:
        if "owner_id" in table.columns:
            where = "WHERE owner_id = :owner"
        elif table.name == "users":
            where = "WHERE id = :owner"
        else:
            where = ""
        digests[table.name] = session.execute(
            text(
                f"SELECT count(*)::text || ':' || md5(coalesce(string_agg(t::text, '|' "  # noqa: S608
                f"ORDER BY t::text), '')) FROM {table.name} t {where}"
            ),
            {"owner": owner_id},
        ).scalar_one()
    return digests


def _url(rule: str, ids: dict[str, str]) -> str:
    url = rule
    for name, value in ids.items():
        for converter in ("uuid:", ""):
            url = url.replace(f"<{converter}{name}>", value)
    assert "<" not in url, f"no id in the world for {rule}: add it to `world`"
    return url


# --------------------------------------------------------------------------- tests


def test_every_route_is_in_the_matrix(app):
    routes = _routes(app)
    missing = sorted(routes - ROUTES.keys())
    stale = sorted(ROUTES.keys() - routes)
    assert not missing, f"routes with no entry in ROUTES (classify them): {missing}"
    assert not stale, f"entries in ROUTES for routes that no longer exist: {stale}"
    with_ids = [key for key in routes if "<" in key[1]]
    unclassified = [key for key in with_ids if isinstance(ROUTES[key], Unowned)]
    assert unclassified == [("GET", "/static/<path:filename>")]


def test_the_fingerprint_sees_a_change(alice, world, session):
    """The control for "changes nothing": Alice's own change does show."""
    before = fingerprint(session, world.user_id)
    assert alice.patch(f"/v1/agents/{world.ids['agent_id']}", json={"name": "x"}).status_code == 200
    assert fingerprint(session, world.user_id) != before


def test_routes_with_ids_are_404_and_change_nothing(world, intruder, session):
    kind, bob = intruder
    failures = []
    for method, rule in _by_kind(Owned):
        entry = ROUTES[(method, rule)]
        assert isinstance(entry, Owned)
        url = _url(rule, world.ids) + entry.query
        body = entry.body(world) if entry.body else None
        before = fingerprint(session, world.user_id)
        response = send(bob.client, method, url, bob.headers, body)
        expected = 401 if entry.bearer_only and kind == "api key" else 404
        if response.status_code != expected:
            failures.append(
                f"{method} {rule}: {response.status_code} {response.get_data()[:200]!r}"
            )
            continue
        if expected == 404:
            # The same answer as for an id that never existed: no existence oracle.
            absent = send(bob.client, method, _url(rule, _fresh_ids(world)) + entry.query,
                          bob.headers, body)  # fmt: skip
            if (absent.status_code, absent.json["type"], absent.json["detail"]) != (
                404, response.json["type"], response.json["detail"]
            ):  # fmt: skip
                failures.append(f"{method} {rule}: differs from an unknown id: {absent.json}")
        if fingerprint(session, world.user_id) != before:
            failures.append(f"{method} {rule}: changed Alice's rows")
    assert not failures, "\n".join(failures)
    assert len(_by_kind(Owned)) >= 20


def _fresh_ids(world: World) -> dict[str, str]:
    return {name: str(uuid.uuid4()) for name in world.ids}


def test_lists_never_show_another_owners_rows(alice, world, intruder, session):
    kind, bob = intruder
    failures = []
    for method, rule in _by_kind(Listing):
        entry = ROUTES[(method, rule)]
        assert isinstance(entry, Listing)
        if entry.committed_only:
            continue
        hers = send(alice.client, method, rule, alice.headers)
        assert hers.status_code == 200, (rule, hers.json)
        shown = {str(item[entry.key]) for item in hers.json["items"]}
        expected_ids = {world.ids[name] for name in entry.shows}
        assert expected_ids <= shown, f"{rule}: Alice's own list misses her rows (bad control)"
        response = send(bob.client, method, rule, bob.headers)
        if entry.bearer_only and kind == "api key":
            if response.status_code != 401:
                failures.append(f"{rule}: {response.status_code} for an API key")
            continue
        if response.status_code != 200:
            failures.append(f"{rule}: {response.status_code}")
            continue
        leaked = {str(item.get(entry.key)) for item in response.json["items"]} & shown
        if leaked or world.user_id in response.get_data(as_text=True):
            failures.append(f"{rule}: shows Alice's rows {sorted(leaked)}")
    assert not failures, "\n".join(failures)


def test_named_streams_are_per_owner(alice, world, intruder, session):
    _, bob = intruder
    for method, rule in _by_kind(Namespaced):
        entry = ROUTES[(method, rule)]
        assert isinstance(entry, Namespaced)
        before = fingerprint(session, world.user_id)
        body = entry.body(world) if entry.body else None
        response = send(bob.client, method, _url(rule, world.ids), bob.headers, body)
        assert response.status_code == entry.status, (rule, response.json)
        assert alice.email not in response.get_data(as_text=True), rule
        assert fingerprint(session, world.user_id) == before, f"{method} {rule} changed Alice's"
    hers = alice.get(f"/v1/streams/{world.ids['stream']}/events").json["items"]
    assert [e["data"] for e in hers] == [{"who": alice.email}]


def test_bodies_naming_another_owners_things_are_refused(world, intruder, session):
    _, bob = intruder
    for (method, rule), entry in sorted(ROUTES.items()):
        if not (isinstance(entry, Unowned) and entry.status is not None and entry.body):
            continue
        before = fingerprint(session, world.user_id)
        response = send(bob.client, method, rule, bob.headers, entry.body(world))
        assert response.status_code == entry.status, (rule, response.json)
        assert fingerprint(session, world.user_id) == before


def test_self_routes_show_the_caller(alice, world, intruder):
    _, bob = intruder
    me = bob.get("/v1/auth/me").json
    assert me["email"] == bob.email and str(me["id"]) != world.user_id
    theirs = bob.get("/v1/webhooks/callback-secret")
    hers = alice.get("/v1/webhooks/callback-secret")
    assert theirs.status_code == hers.status_code == 200
    assert theirs.json["secret"] != hers.json["secret"]


@pytest.fixture
def committed_app(settings):  # type: ignore[no-untyped-def]
    app = create_app(settings, passwords=FAST_PASSWORDS)
    yield app
    app.extensions["conveyor"].notifier.close()
    app.extensions["conveyor"].engine.dispose()


def test_the_feed_never_shows_another_owners_events(committed_app):
    """On a database whose transactions commit; the feed holds events back while any older
    writing transaction is open anywhere on the server, so Alice's own read polls."""
    client = committed_app.test_client()
    alice = AuthClient.register(client, f"feed-a-{uuid.uuid4().hex[:8]}@example.com")
    bob = AuthClient.register(client, f"feed-b-{uuid.uuid4().hex[:8]}@example.com")
    marker = uuid.uuid4().hex
    appended = alice.post(
        "/v1/streams/s/events", json={"events": [{"type": "t", "data": {"m": marker}}]}
    )
    assert appended.status_code == 201
    assert [e for e in ROUTES.values() if isinstance(e, Listing) and e.committed_only]
    poll(lambda: marker in alice.get("/v1/events").get_data(as_text=True), timeout=15)
    for intruder in (bob, new_key(bob)):
        feed = intruder.get("/v1/events?limit=1000")
        assert feed.status_code == 200
        assert marker not in feed.get_data(as_text=True)
        assert feed.json["items"] == []
