"""Webhook endpoints through the HTTP API: create, read, change, rotate, delete, and the
callback secret. Deliveries are in test_webhook_delivery.py."""

import pytest
from sqlalchemy import func, select

from models import Job, WebhookDelivery
from services import webhooks
from services.webhooks import job_ended

RECEIVER = "http://127.0.0.1:9/hook"  # registration only: nothing is sent in this module
TERMINAL = ["job.succeeded", "job.failed", "job.cancelled", "job.timed_out"]


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})


def create(client, **fields):
    body = {"url": RECEIVER, "event_types": ["job.succeeded"], **fields}
    response = client.post("/v1/webhooks", json=body)
    assert response.status_code == 201, response.json
    return response.json


def test_create_answers_the_secret_once(alice):
    created = create(alice, description="ci", event_types=TERMINAL)
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["enabled"] is True and created["disabled_reason"] is None
    assert created["event_types"] == TERMINAL and created["description"] == "ci"
    shown = alice.get(f"/v1/webhooks/{created['id']}")
    assert shown.status_code == 200
    assert "secret" not in shown.json and shown.json["url"] == RECEIVER
    listed = alice.get("/v1/webhooks").json["items"]
    assert [e["id"] for e in listed] == [created["id"]]


def test_each_endpoint_has_its_own_secret(alice):
    assert create(alice)["secret"] != create(alice)["secret"]


def test_create_sets_location(alice):
    response = alice.post("/v1/webhooks", json={"url": RECEIVER, "event_types": ["job.failed"]})
    assert response.headers["Location"] == f"/v1/webhooks/{response.json['id']}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": RECEIVER, "event_types": ["job.started"]}, "event_types.0"),
        ({"url": RECEIVER, "event_types": []}, "event_types"),
        ({"url": "ftp://127.0.0.1/hook", "event_types": ["job.failed"]}, "url"),
        ({"url": "http://10.0.0.1/hook", "event_types": ["job.failed"]}, "url"),
        ({"url": "http://169.254.169.254/latest", "event_types": ["job.failed"]}, "url"),
        ({"url": RECEIVER, "event_types": ["job.failed"], "secret": "mine"}, "secret"),
        ({"url": "http://127.0.0.2:9/a\x7fb", "event_types": ["job.failed"]}, "url"),
        ({"url": "http://127.0.0.2:9/a\x9bb", "event_types": ["job.failed"]}, "url"),
    ],
)
def test_invalid_endpoints_are_422(alice, body, field):
    response = alice.post("/v1/webhooks", json=body)
    assert response.status_code == 422, response.json
    assert field in [e["field"] for e in response.json["errors"]]
    assert alice.get("/v1/webhooks").json["items"] == []


def test_patch_changes_fields_and_checks_the_new_url(alice):
    created = create(alice)
    changed = alice.patch(
        f"/v1/webhooks/{created['id']}",
        json={"url": "http://127.0.0.2:9/other", "event_types": ["job.failed", "job.failed"]},
    )
    assert changed.status_code == 200, changed.json
    assert changed.json["url"] == "http://127.0.0.2:9/other"
    assert changed.json["event_types"] == ["job.failed"]
    refused = alice.patch(f"/v1/webhooks/{created['id']}", json={"url": "http://[::1]/x"})
    assert refused.status_code == 422 and refused.json["errors"][0]["field"] == "url"
    assert "loopback" in refused.json["errors"][0]["detail"]
    assert alice.get(f"/v1/webhooks/{created['id']}").json["url"] == "http://127.0.0.2:9/other"


def test_disable_shows_why_and_enable_clears_it(alice):
    created = create(alice)
    disabled = alice.patch(
        f"/v1/webhooks/{created['id']}", json={"enabled": False, "disabled_reason": "maintenance"}
    ).json
    assert disabled["enabled"] is False and disabled["disabled_reason"] == "maintenance"
    assert disabled["disabled_at"] is not None
    enabled = alice.patch(f"/v1/webhooks/{created['id']}", json={"enabled": True}).json
    assert enabled["enabled"] is True
    assert enabled["disabled_reason"] is None and enabled["disabled_at"] is None


@pytest.mark.parametrize("value", ["false", 0, None])
def test_enabled_must_be_a_json_boolean(alice, value):
    created = create(alice)
    response = alice.patch(f"/v1/webhooks/{created['id']}", json={"enabled": value})
    assert response.status_code == 422, response.json
    # null passes the type and fails the model's check, which names the whole body
    assert [e["field"] for e in response.json["errors"]] == ["body" if value is None else "enabled"]
    assert alice.get(f"/v1/webhooks/{created['id']}").json["enabled"] is True


def test_a_disabled_reason_is_kept_only_for_a_disabled_endpoint(alice):
    """It was dropped without a word unless the same request disabled the endpoint."""
    url = f"/v1/webhooks/{create(alice)['id']}"
    refused = alice.patch(url, json={"disabled_reason": "why"})
    assert refused.status_code == 422, refused.json
    assert refused.json["errors"][0]["field"] == "disabled_reason"
    assert alice.get(url).json["disabled_reason"] is None
    disabled = alice.patch(url, json={"enabled": False, "disabled_reason": "first"}).json
    changed = alice.patch(url, json={"enabled": False, "disabled_reason": "second"}).json
    assert changed["disabled_reason"] == "second"
    assert changed["disabled_at"] == disabled["disabled_at"]
    assert alice.patch(url, json={"disabled_reason": "third"}).json["disabled_reason"] == "third"
    assert alice.patch(url, json={"enabled": True, "disabled_reason": "x"}).status_code == 422
    assert alice.get(url).json["enabled"] is False


def test_if_match_and_if_none_match_are_evaluated_though_endpoints_have_no_etag(alice):
    """They were ignored: a client's conditional change went through unconditionally."""
    url = f"/v1/webhooks/{create(alice)['id']}"
    stale = alice.patch(url, json={"description": "x"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412, stale.json
    assert alice.delete(url, headers={"If-None-Match": "*"}).status_code == 412
    assert alice.get(url).json["description"] is None
    assert alice.patch(url, json={"description": "y"}, headers={"If-Match": "*"}).status_code == 200
    assert alice.delete(url, headers={"If-None-Match": '"1"'}).status_code == 204


def test_answers_carrying_a_secret_are_not_to_be_stored(alice):
    created = alice.post("/v1/webhooks", json={"url": RECEIVER, "event_types": ["job.failed"]})
    rotated = alice.post(f"/v1/webhooks/{created.json['id']}/rotate-secret")
    callback = alice.get("/v1/webhooks/callback-secret")
    for answer in (created, rotated, callback):
        assert answer.status_code in (200, 201) and answer.headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in alice.get(f"/v1/webhooks/{created.json['id']}").headers


def test_empty_patch_is_422(alice):
    created = create(alice)
    assert alice.patch(f"/v1/webhooks/{created['id']}", json={}).status_code == 422


def test_rotate_gives_a_new_secret_and_keeps_the_old_one_for_a_while(alice):
    created = create(alice)
    rotated = alice.post(f"/v1/webhooks/{created['id']}/rotate-secret")
    assert rotated.status_code == 200
    assert rotated.json["secret"].startswith("whsec_")
    assert rotated.json["secret"] != created["secret"]
    assert rotated.json["previous_secret_expires_at"] is not None


def test_delete_removes_the_endpoint_and_its_deliveries(alice, agent_job, session):
    created = create(alice)
    endpoint_id = created["id"]
    job_ended(session, owner_id=agent_job.owner_id, job_id=agent_job.id, event_type="job.succeeded")
    session.commit()
    assert alice.get(f"/v1/webhooks/{endpoint_id}/deliveries").json["items"]
    assert alice.delete(f"/v1/webhooks/{endpoint_id}").status_code == 204
    assert alice.get(f"/v1/webhooks/{endpoint_id}").status_code == 404
    of_job = WebhookDelivery.job_id == agent_job.id
    left = session.scalar(select(func.count()).select_from(WebhookDelivery).where(of_job))
    assert left == 0


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", ""),
        ("patch", ""),
        ("delete", ""),
        ("post", "/rotate-secret"),
        ("get", "/deliveries"),
    ],
)
def test_someone_elses_endpoint_is_404(alice, bob, method, suffix):
    created = create(alice)
    kwargs = {"json": {"description": "mine now"}} if method == "patch" else {}
    response = getattr(bob, method)(f"/v1/webhooks/{created['id']}{suffix}", **kwargs)
    assert response.status_code == 404
    assert alice.get(f"/v1/webhooks/{created['id']}").json["description"] is None


@pytest.mark.parametrize("filter_by", ["endpoint_id", "job_id"])
def test_listing_deliveries_of_someone_elses_endpoint_or_job_is_404(alice, bob, filter_by):
    """The one answered 404, the other an empty page."""
    owned = (
        create(alice)["id"]
        if filter_by == "endpoint_id"
        else alice.submit(alice.create_agent()["id"])["id"]
    )
    assert alice.get(f"/v1/deliveries?{filter_by}={owned}").status_code == 200
    assert bob.get(f"/v1/deliveries?{filter_by}={owned}").status_code == 404


def test_callback_secret_is_stable_and_per_owner(alice, bob):
    first = alice.get("/v1/webhooks/callback-secret")
    assert first.status_code == 200 and first.json["secret"].startswith("whsec_")
    assert alice.get("/v1/webhooks/callback-secret").json == first.json
    assert bob.get("/v1/webhooks/callback-secret").json != first.json


def test_webhooks_need_a_token(client):
    assert client.get("/v1/webhooks").status_code == 401
    nobody = "00000000-0000-0000-0000-000000000000"
    assert client.post(f"/v1/deliveries/{nobody}/redeliver").status_code == 401


@pytest.fixture
def agent_job(alice, session_factory):
    """A job of alice's, as a row (submitted through the API)."""

    agent = alice.create_agent()
    job = alice.submit(agent["id"])
    with session_factory() as session:
        return session.get(Job, job["id"])


def test_endpoints_are_capped(client, alice, bob, monkeypatch):
    """There was no limit: every job's end writes a delivery per subscribed endpoint in the
    transaction that ends it, and sends each, so a user with thousands of endpoints made
    every job of theirs thousands of rows and requests."""
    monkeypatch.setattr(webhooks, "MAX_ENDPOINTS", 2)
    create(alice)
    second = create(alice, event_types=["job.failed"])
    refused = alice.post("/v1/webhooks", json={"url": RECEIVER, "event_types": ["job.failed"]})
    assert refused.status_code == 409
    assert "at most 2 webhook endpoints" in refused.json["detail"]
    assert len(alice.get("/v1/webhooks").json["items"]) == 2
    create(bob)  # the limit is each user's
    assert alice.delete(f"/v1/webhooks/{second['id']}").status_code == 204
    create(alice)
    declared = client.get("/openapi.json").json["paths"]["/v1/webhooks"]["post"]["responses"]
    assert "409" in declared


@pytest.mark.parametrize("text", ["\x1b[2J\x1b[31mowned", "bell\x07", "nul\x00", "c1\x9b31m"])
def test_notes_hold_no_control_characters(alice, text):
    """A description and a disabled reason are shown to people, in terminals too: escape
    sequences in them were stored and sent back as they came."""
    refused = alice.post(
        "/v1/webhooks", json={"url": RECEIVER, "event_types": ["job.failed"], "description": text}
    )
    assert refused.status_code == 422, refused.json
    assert [e["field"] for e in refused.json["errors"]] == ["description"]
    assert alice.get("/v1/webhooks").json["items"] == []
    url = f"/v1/webhooks/{create(alice, description='kept')['id']}"
    for change in ({"description": text}, {"enabled": False, "disabled_reason": text}):
        assert alice.patch(url, json=change).status_code == 422
    kept = alice.get(url).json
    assert (kept["description"], kept["enabled"], kept["disabled_reason"]) == ("kept", True, None)


def test_notes_may_run_over_lines(alice):
    text = "Orders to the warehouse.\n\tOwner: ops\r\nPager: #42"
    url = f"/v1/webhooks/{create(alice, description=text)['id']}"
    assert alice.get(url).json["description"] == text
    why = "Receiver moved;\nback on Monday"
    changed = alice.patch(url, json={"enabled": False, "disabled_reason": why})
    assert changed.status_code == 200 and changed.json["disabled_reason"] == why
