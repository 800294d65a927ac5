import hashlib

import pytest
from sqlalchemy import text

from services import api_keys
from tests.security.support import KeyClient, new_key


def test_create_shows_the_key_once_and_lists_without_it(alice):
    response = alice.post("/v1/api-keys", json={"name": "deploy bot"})
    assert response.status_code == 201
    body = response.json
    assert set(body) == {"id", "name", "key", "prefix", "created_at", "last_used_at"}
    assert body["name"] == "deploy bot"
    assert body["key"].startswith("cvk_") and len(body["key"]) >= 40
    assert body["key"].startswith(body["prefix"]) and len(body["prefix"]) < len(body["key"])
    assert response.headers["Location"] == f"/v1/api-keys/{body['id']}"
    assert response.headers["Cache-Control"] == "no-store"

    listed = alice.get("/v1/api-keys")
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json["items"]] == [body["id"]]
    assert "key" not in listed.json["items"][0]
    assert body["key"] not in listed.get_data(as_text=True)


def _mine(alice) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"owner": str(alice.get("/v1/auth/me").json["id"])}


def test_only_the_sha256_is_stored(alice, session):
    key = new_key(alice).key
    rows = session.execute(
        text("SELECT key_hash, api_keys::text AS row FROM api_keys WHERE owner_id = :owner"),
        _mine(alice),
    ).all()
    assert [row.key_hash for row in rows] == [hashlib.sha256(key.encode()).hexdigest()]
    assert key not in rows[0].row


def test_a_key_acts_as_its_user_on_every_route(alice):
    keyed = new_key(alice)
    me = keyed.get("/v1/auth/me")
    assert me.status_code == 200
    assert me.json["email"] == alice.email
    agent = keyed.create_agent(name="by key")
    assert alice.get(f"/v1/agents/{agent['id']}").status_code == 200
    job = keyed.submit(agent["id"])
    assert keyed.get(f"/v1/jobs/{job['id']}").json["id"] == job["id"]


def test_a_revoked_key_is_refused_at_once(alice):
    keyed = new_key(alice)
    assert keyed.get("/v1/agents").status_code == 200
    key_id = alice.get("/v1/api-keys").json["items"][0]["id"]
    conditional = alice.delete(f"/v1/api-keys/{key_id}", headers={"If-Match": '"1"'})
    assert conditional.status_code == 412  # keys have no ETag: no tag matches
    assert keyed.get("/v1/agents").status_code == 200
    shown = alice.get(f"/v1/api-keys/{key_id}")  # where the creation's Location points
    assert shown.status_code == 200 and shown.json["id"] == key_id and "key" not in shown.json
    assert alice.delete(f"/v1/api-keys/{key_id}").status_code == 204
    assert alice.get(f"/v1/api-keys/{key_id}").status_code == 404
    refused = keyed.get("/v1/agents")
    assert refused.status_code == 401
    assert refused.mimetype == "application/problem+json"
    assert alice.get("/v1/api-keys").json["items"] == []
    assert alice.delete(f"/v1/api-keys/{key_id}").status_code == 404


def test_last_use_is_recorded_at_most_once_a_minute(alice, session):
    keyed = new_key(alice)
    mine = _mine(alice)

    def set_last_use(interval: str) -> object:
        session.execute(
            text(
                "UPDATE api_keys SET last_used_at = now() - CAST(:ago AS interval) "
                "WHERE owner_id = :owner"
            ),
            {**mine, "ago": interval},
        )
        session.flush()
        return last_use()

    def last_use() -> object:
        return session.execute(
            text("SELECT last_used_at FROM api_keys WHERE owner_id = :owner"), mine
        ).scalar_one()

    assert alice.get("/v1/api-keys").json["items"][0]["last_used_at"] is None
    assert keyed.get("/v1/agents").status_code == 200
    first = alice.get("/v1/api-keys").json["items"][0]["last_used_at"]
    assert first is not None

    # Used again within the minute: no write.
    thirty_ago = set_last_use("30 seconds")
    assert keyed.get("/v1/agents").status_code == 200
    assert last_use() == thirty_ago

    # Older than a minute: written again, even when the request itself fails.
    two_ago = set_last_use("2 minutes")
    assert keyed.get("/v1/agents/00000000-0000-0000-0000-000000000000").status_code == 404
    assert last_use() > two_ago  # type: ignore[operator]


def test_keys_are_managed_with_a_token_only(alice):
    keyed = new_key(alice)
    assert keyed.post("/v1/api-keys", json={"name": "another"}).status_code == 401
    assert keyed.get("/v1/api-keys").status_code == 401
    key_id = alice.get("/v1/api-keys").json["items"][0]["id"]
    assert keyed.delete(f"/v1/api-keys/{key_id}").status_code == 401
    assert keyed.post("/v1/auth/logout").status_code == 401
    assert keyed.get("/v1/agents").status_code == 200  # still live


@pytest.mark.parametrize(
    "key", ["", "nonsense", "cvk_", "cvk_" + "A" * 43, "cvk_" + "x" * 500, "Bearer cvk_abc"]
)
def test_unknown_keys_are_401(client, alice, key):
    new_key(alice)
    response = client.get("/v1/agents", headers={"X-API-Key": key})
    assert response.status_code == 401
    assert response.json["type"] == "/problems/unauthorized"


def test_a_key_and_a_token_together_are_refused(alice):
    keyed = new_key(alice)
    both = {**alice.headers, **keyed.headers}
    assert alice.client.get("/v1/agents", headers=both).status_code == 401


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x" * 201}, {"name": "a", "key": "k"}])
def test_create_validates_the_name(alice, body):
    assert alice.post("/v1/api-keys", json=body).status_code == 422
    assert alice.get("/v1/api-keys").json["items"] == []


def test_live_keys_are_capped(alice, monkeypatch):
    monkeypatch.setattr(api_keys, "MAX_ACTIVE_KEYS", 2)
    first, _ = new_key(alice, "one"), new_key(alice, "two")
    assert isinstance(first, KeyClient)
    assert alice.post("/v1/api-keys", json={"name": "three"}).status_code == 409
    key_id = alice.get("/v1/api-keys").json["items"][-1]["id"]
    assert alice.delete(f"/v1/api-keys/{key_id}").status_code == 204
    assert alice.post("/v1/api-keys", json={"name": "three"}).status_code == 201
