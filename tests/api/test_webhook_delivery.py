"""Webhook deliveries to a real receiver on loopback, made in-process the way the Celery
task makes them. Every request the receiver gets is verified with `standardwebhooks`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid

import pytest
import redis
from sqlalchemy import func, select, update
from standardwebhooks import Webhook, WebhookVerificationError

from models import Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from services import job_execution, job_transitions, webhook_delivery
from services.job_policy import JobPolicy
from services.webhook_policy import WebhookPolicy, parse_networks
from services.webhooks import DELIVER_TASK, WEBHOOKS_QUEUE
from tests.helpers import poll
from tests.webhook_receiver import Listener, answer, endless, raw, receiver, slow

LOOPBACK = parse_networks(["127.0.0.0/8"])
POLICY = WebhookPolicy(
    allowed_networks=LOOPBACK,
    retry_schedule_s=(0.05, 0.05, 0.05),
    timeout_s=1.0,
    jitter=0.0,
)
JOB_POLICY = JobPolicy()


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})


class Broker:
    """The `webhooks` queue in the test's Redis, where the app publishes after commit."""

    def __init__(self, url: str, app) -> None:  # type: ignore[no-untyped-def]
        self.redis = redis.Redis.from_url(url)
        self.redis.delete(WEBHOOKS_QUEUE)
        self._publisher = app.extensions["conveyor"].publisher

    def clear(self) -> None:
        assert self._publisher.flush()
        self.redis.delete(WEBHOOKS_QUEUE)

    def deliveries(self) -> list[str]:
        """Delivery ids of the deliver tasks waiting in the queue, oldest first."""
        assert self._publisher.flush()  # the web's publishing thread has sent what it had
        found = []
        for queued in reversed(self.redis.lrange(WEBHOOKS_QUEUE, 0, -1)):
            message = json.loads(queued)
            assert message["headers"]["task"] == DELIVER_TASK
            args, _, _ = json.loads(base64.b64decode(message["body"]))
            found.append(args[0])
        return found


@pytest.fixture
def published(app, settings):
    broker = Broker(settings.redis_url, app)
    yield broker
    broker.redis.close()


@pytest.fixture
def hook():
    with receiver() as running:
        yield running


@pytest.fixture
def agent(alice):
    return alice.create_agent()


def subscribe(client, url, event_types=("job.succeeded",)):
    response = client.post("/v1/webhooks", json={"url": url, "event_types": list(event_types)})
    assert response.status_code == 201, response.json
    return response.json


def run_job(client, session_factory, agent, **fields):
    job = client.submit(agent["id"], **fields)
    job_execution.execute(session_factory, uuid.UUID(job["id"]), policy=JOB_POLICY)
    return client.get(f"/v1/jobs/{job['id']}").json


def deliveries(client, endpoint_id):
    response = client.get(f"/v1/webhooks/{endpoint_id}/deliveries")
    assert response.status_code == 200, response.json
    return response.json["items"]


def only_delivery(client, endpoint_id):
    (delivery,) = deliveries(client, endpoint_id)
    return delivery


def deliver(session_factory, delivery_id, policy=POLICY):
    return webhook_delivery.deliver(session_factory, uuid.UUID(delivery_id), policy=policy)


def claimed_by_a_worker_that_died(session_factory, delivery_id):
    """A worker claimed the delivery and died before recording anything; its lease has run
    out long since."""
    with session_factory.begin() as session:
        assert webhook_delivery.claim_due(session, delivery_id, policy=POLICY) is not None
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(next_attempt_at=func.now() - dt.timedelta(minutes=5))
        )


def deliver_when_due(session_factory, delivery_id, policy=POLICY, timeout=5.0):
    """Attempt as soon as the delivery is due again (its retry delay has passed)."""
    return poll(lambda: deliver(session_factory, delivery_id, policy), timeout=timeout)


# --- what a delivery looks like ---------------------------------------------------------


def test_a_terminal_job_event_is_delivered_signed(alice, agent, session_factory, hook):
    endpoint = subscribe(alice, hook.url)
    job = run_job(alice, session_factory, agent)
    delivery = only_delivery(alice, endpoint["id"])
    assert delivery["status"] == "pending" and delivery["event_type"] == "job.succeeded"

    assert deliver(session_factory, delivery["id"]) == "succeeded"
    (request,) = hook.requests
    body = request.verify(endpoint["secret"])
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "job.succeeded"
    assert body["data"] == job  # the job exactly as GET /v1/jobs/<id> shows it
    assert body["timestamp"] == job["finished_at"]
    assert list(body) == ["type", "timestamp", "data"]
    assert request.headers["webhook-id"] == delivery["message_id"]
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["content-type"] == "application/json"
    assert request.path == "/hook"

    logged = only_delivery(alice, endpoint["id"])
    assert logged["status"] == "succeeded" and logged["last_status_code"] == 200
    (attempt,) = logged["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["duration_ms"] >= 0 and attempt["response_excerpt"] == "ok"


def test_a_wrong_secret_does_not_verify(alice, agent, session_factory, hook):
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    deliver(session_factory, only_delivery(alice, endpoint["id"])["id"])
    other = subscribe(alice, hook.url)["secret"]
    with pytest.raises(WebhookVerificationError):
        hook.requests[0].verify(other)


def test_the_jobs_own_webhook_url_is_signed_with_the_callback_secret(
    alice, agent, session_factory, hook
):
    endpoint = subscribe(alice, hook.url)
    job = run_job(alice, session_factory, agent, webhook_url=hook.url + "?job=1")
    found = alice.get(f"/v1/deliveries?job_id={job['id']}").json["items"]
    assert len(found) == 2
    callback = next(d for d in found if d["endpoint_id"] is None)
    assert callback["url"] == hook.url + "?job=1"
    # One event, one message: both receivers see the same webhook-id.
    assert {d["message_id"] for d in found} == {callback["message_id"]}
    for item in found:
        assert deliver(session_factory, item["id"]) == "succeeded"
    by_path = {r.path: r for r in hook.requests}
    secret = alice.get("/v1/webhooks/callback-secret").json["secret"]
    assert by_path["/hook?job=1"].verify(secret)["data"]["id"] == job["id"]
    assert by_path["/hook"].verify(endpoint["secret"])["data"]["id"] == job["id"]
    with pytest.raises(WebhookVerificationError):
        by_path["/hook?job=1"].verify(endpoint["secret"])


# --- the outbox -------------------------------------------------------------------------


def test_delivery_rows_are_written_with_the_event_and_published_after_commit(
    alice, agent, session_factory, published, hook
):
    endpoint = subscribe(alice, hook.url, ["job.cancelled"])
    job = alice.submit(agent["id"])
    published.clear()
    # The transition rolls back: neither its event nor a delivery remains, nothing is sent.
    with session_factory() as session:
        job_transitions.end_jobs(session, Job.id == uuid.UUID(job["id"]), "cancelled")
        of_job = WebhookDelivery.job_id == uuid.UUID(job["id"])
        assert session.scalar(select(func.count()).select_from(WebhookDelivery).where(of_job)) == 1
        session.rollback()
    assert deliveries(alice, endpoint["id"]) == []
    assert published.deliveries() == []
    # Committed: the row and, after the commit, its task.
    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    delivery = only_delivery(alice, endpoint["id"])
    assert published.deliveries() == [delivery["id"]]


def test_only_subscribed_types_and_enabled_endpoints_get_deliveries(
    alice, bob, agent, session_factory, hook
):
    failed_only = subscribe(alice, hook.url, ["job.failed"])
    disabled = subscribe(alice, hook.url)
    alice.patch(f"/v1/webhooks/{disabled['id']}", json={"enabled": False})
    bobs = subscribe(bob, hook.url)
    run_job(alice, session_factory, agent)
    for endpoint in (failed_only, disabled):
        assert deliveries(alice, endpoint["id"]) == []
    assert deliveries(bob, bobs["id"]) == []


# --- retries and failures ---------------------------------------------------------------


def test_failures_are_retried_until_the_receiver_accepts(alice, agent, session_factory, hook):
    hook.then(answer(500), answer(503, Retry_After="0"), answer(200))
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    assert deliver(session_factory, delivery_id) == "failed"
    shown = only_delivery(alice, endpoint["id"])
    assert shown["status"] == "failed" and shown["last_error"] == "answered 500"
    assert shown["next_attempt_at"] is not None
    assert alice.get(f"/v1/webhooks/{endpoint['id']}").json["failing_since"] is not None
    assert deliver_when_due(session_factory, delivery_id) == "failed"
    assert deliver_when_due(session_factory, delivery_id) == "succeeded"

    ids = {r.headers["webhook-id"] for r in hook.requests}
    assert len(hook.requests) == 3 and ids == {shown["message_id"]}
    for request in hook.requests:
        request.verify(endpoint["secret"])
    logged = only_delivery(alice, endpoint["id"])
    assert [a["status_code"] for a in logged["attempts"]] == [500, 503, 200]
    assert logged["attempt_count"] == 3 and logged["last_error"] is None
    assert alice.get(f"/v1/webhooks/{endpoint['id']}").json["failing_since"] is None


def test_a_delivery_gives_up_after_the_schedule(alice, agent, session_factory, hook):
    hook.default = answer(500)
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    outcomes = [deliver(session_factory, delivery_id)]
    while outcomes[-1] == "failed":
        outcomes.append(deliver_when_due(session_factory, delivery_id))
    assert outcomes == ["failed"] * 3 + ["dead"]  # schedule of 3 retries: 4 attempts
    assert len(hook.requests) == 4
    dead = only_delivery(alice, endpoint["id"])
    assert dead["next_attempt_at"] is None
    assert dead["last_error"] == "gave up after 4 attempts; answered 500"
    assert deliver(session_factory, delivery_id) is None  # nothing left to do


def test_retry_after_on_429_postpones_the_retry(alice, agent, session_factory, hook):
    hook.then(answer(429, Retry_After="120"))
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    before = dt.datetime.now(dt.UTC)
    assert deliver(session_factory, delivery_id) == "failed"
    due = dt.datetime.fromisoformat(only_delivery(alice, endpoint["id"])["next_attempt_at"])
    assert 110 < (due - before).total_seconds() < 130  # not the schedule's 0.05 s
    assert deliver(session_factory, delivery_id) is None  # not due yet


@pytest.mark.parametrize(("status", "outcome"), [(429, "failed"), (200, "succeeded")])
def test_a_retry_after_in_other_digits_is_ignored(
    alice, agent, session_factory, hook, status, outcome
):
    """ "²" (0xB2 as latin-1) passes str.isdigit but not float(): the attempt raised, and the
    delivery was sent again every lease for ever, even after a 200."""
    hook.then(answer(status, Retry_After="²"))
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    assert deliver(session_factory, delivery_id) == outcome
    shown = alice.get(f"/v1/deliveries/{delivery_id}").json
    assert shown["last_status_code"] == status and len(shown["attempts"]) == 1


def test_attempts_that_all_ended_without_an_outcome_end_the_delivery(
    alice, agent, session_factory, hook
):
    """Each claim, then its worker dies (no `record`) and the lease runs out; once every
    attempt of the schedule was claimed, the next claim gives up instead of sending."""
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = uuid.UUID(only_delivery(alice, endpoint["id"])["id"])
    for _ in range(POLICY.max_attempts):
        claimed_by_a_worker_that_died(session_factory, delivery_id)
    assert deliver(session_factory, str(delivery_id)) is None
    assert hook.requests == []
    dead = alice.get(f"/v1/deliveries/{delivery_id}").json
    assert (dead["status"], dead["next_attempt_at"]) == ("dead", None)
    assert dead["last_error"] == (
        f"gave up after {POLICY.max_attempts} attempts; the last one ended without an outcome"
    )


def test_410_disables_the_endpoint_with_a_reason(alice, agent, session_factory, hook):
    hook.then(answer(410))
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) == "dead"
    shown = alice.get(f"/v1/webhooks/{endpoint['id']}").json
    assert shown["enabled"] is False and shown["disabled_at"] is not None
    assert shown["disabled_reason"].startswith("the endpoint answered 410 Gone at ")
    # A disabled endpoint gets no new deliveries, and cannot be redelivered to.
    run_job(alice, session_factory, agent)
    (dead,) = deliveries(alice, endpoint["id"])
    refused = alice.post(f"/v1/deliveries/{dead['id']}/redeliver")
    assert refused.status_code == 409 and refused.json["disabled_reason"]


def test_an_endpoint_failing_for_days_is_disabled(alice, agent, session_factory, hook):
    hook.default = answer(502)
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    assert deliver(session_factory, delivery_id) == "failed"
    with session_factory.begin() as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == uuid.UUID(endpoint["id"]))
            .values(failing_since=func.now() - dt.timedelta(days=6))
        )
    assert deliver_when_due(session_factory, delivery_id) == "dead"
    shown = alice.get(f"/v1/webhooks/{endpoint['id']}").json
    assert shown["enabled"] is False
    assert shown["disabled_reason"].startswith("every delivery has failed since ")
    assert shown["disabled_reason"].endswith("the last one: answered 502")


def test_a_queued_delivery_to_a_disabled_endpoint_ends_unsent(alice, agent, session_factory, hook):
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    alice.patch(f"/v1/webhooks/{endpoint['id']}", json={"enabled": False})
    assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) is None
    dead = only_delivery(alice, endpoint["id"])
    assert dead["status"] == "dead" and dead["attempts"] == []
    assert dead["last_error"] == "not sent: the endpoint is disabled (disabled by its owner)"
    assert hook.requests == []


def test_a_redirect_is_a_failure_and_is_not_followed(alice, agent, session_factory, hook):
    with receiver() as elsewhere:
        hook.then(answer(307, Location=elsewhere.url))
        endpoint = subscribe(alice, hook.url)
        run_job(alice, session_factory, agent)
        assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) == "failed"
        assert elsewhere.requests == []
    shown = only_delivery(alice, endpoint["id"])
    assert shown["last_error"] == "answered 307: redirects are not followed"


def test_a_slow_receiver_times_out(alice, agent, session_factory, hook):
    hook.then(slow(30))
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    started = time.monotonic()
    assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) == "failed"
    assert time.monotonic() - started < 5  # the 1 s timeout, not the receiver's 30 s
    (attempt,) = only_delivery(alice, endpoint["id"])["attempts"]
    assert attempt["status_code"] is None and attempt["error"] == "no answer within 1 s"
    assert 900 <= attempt["duration_ms"] < 5000


def test_an_endless_answer_is_cut_short(alice, agent, session_factory, hook):
    hook.then(endless())
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    started = time.monotonic()
    assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) == "succeeded"
    assert time.monotonic() - started < 1  # it stopped reading; it did not wait for the end
    (attempt,) = only_delivery(alice, endpoint["id"])["attempts"]
    assert attempt["status_code"] == 200 and len(attempt["response_excerpt"]) == 1024


def test_an_oversize_answer_is_read_only_up_to_the_limit(alice, agent, session_factory, hook):
    hook.then(answer(200, b"y" * (8 * 1024 * 1024)))
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    small = WebhookPolicy(**{**POLICY.__dict__, "max_response_bytes": 1000})
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    assert deliver(session_factory, delivery_id, small) == "succeeded"
    (attempt,) = only_delivery(alice, endpoint["id"])["attempts"]
    assert attempt["response_excerpt"] == "y" * 1000


@pytest.mark.parametrize(
    ("behaviour", "outcome", "logged"),
    [
        (answer(200, b"ok\x00done"), "succeeded", {"response_excerpt": "ok\ufffddone"}),
        (raw(b"JUNK\x00LINE\r\n\r\n"), "failed", {"status_code": None}),
    ],
    ids=["in the body", "in a broken status line"],
)
def test_a_receivers_nul_is_recorded_replaced(
    alice, agent, session_factory, hook, behaviour, outcome, logged
):
    """PostgreSQL stores no NUL: the attempt's log failed, so a 200 was never recorded,
    and the message was sent again until the delivery was given up as `dead`."""
    hook.then(behaviour)
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) == outcome
    (attempt,) = only_delivery(alice, endpoint["id"])["attempts"]
    assert logged.items() <= attempt.items()
    if outcome == "failed":
        assert "JUNK\ufffdLINE" in attempt["error"]


def test_a_path_beyond_ascii_is_sent_percent_encoded(alice, agent, session_factory, hook):
    """It raised UnicodeEncodeError in every attempt, logged nowhere the owner could see."""
    endpoint = subscribe(alice, f"http://127.0.0.1:{hook.port}/café?q=ü")
    run_job(alice, session_factory, agent)
    assert deliver(session_factory, only_delivery(alice, endpoint["id"])["id"]) == "succeeded"
    (request,) = hook.requests
    assert request.path == "/caf%C3%A9?q=%C3%BC"


# --- rotation and redelivery ------------------------------------------------------------


def test_after_rotation_both_secrets_verify_until_the_overlap_ends(
    alice, agent, session_factory, hook
):
    endpoint = subscribe(alice, hook.url)
    old = endpoint["secret"]
    new = alice.post(f"/v1/webhooks/{endpoint['id']}/rotate-secret").json["secret"]
    run_job(alice, session_factory, agent)
    deliver(session_factory, only_delivery(alice, endpoint["id"])["id"])
    (request,) = hook.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert request.verify(old)["type"] == "job.succeeded"
    assert request.verify(new)["type"] == "job.succeeded"

    with session_factory.begin() as session:
        session.execute(
            update(WebhookEndpoint).values(
                previous_secret_expires_at=func.now() - dt.timedelta(seconds=1)
            )
        )
    run_job(alice, session_factory, agent)
    newest = deliveries(alice, endpoint["id"])[0]
    deliver(session_factory, newest["id"])
    later = hook.requests[1]
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    assert later.verify(new)
    with pytest.raises(WebhookVerificationError):
        later.verify(old)


def test_redelivery_sends_the_same_message_again(
    alice, bob, agent, session_factory, published, hook
):
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = only_delivery(alice, endpoint["id"])["id"]
    assert deliver(session_factory, delivery_id) == "succeeded"
    assert bob.post(f"/v1/deliveries/{delivery_id}/redeliver").status_code == 404
    published.clear()

    response = alice.post(f"/v1/deliveries/{delivery_id}/redeliver")
    assert response.status_code == 202, response.json
    assert response.json["status"] == "pending" and len(response.json["attempts"]) == 1
    assert published.deliveries() == [delivery_id]
    assert deliver(session_factory, delivery_id) == "succeeded"
    first, second = hook.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.verify(endpoint["secret"]) == first.verify(endpoint["secret"])
    shown = alice.get(f"/v1/deliveries/{delivery_id}").json
    assert len(shown["attempts"]) == 2 and shown["status"] == "succeeded"


def outcome_when_meanwhile(session_factory, delivery_id, meanwhile):
    """Claim the delivery, let `meanwhile` happen while the attempt is in flight, then
    send it and record the answer: what `record` says."""
    with session_factory.begin() as session:
        claim = webhook_delivery.claim_due(session, delivery_id, policy=POLICY)
    assert claim is not None
    meanwhile()
    answer_ = webhook_delivery.attempt(claim, policy=POLICY)
    with session_factory.begin() as session:
        return webhook_delivery.record(
            session, claim, answer_, attempted_at=dt.datetime.now(dt.UTC), policy=POLICY
        )


@pytest.mark.parametrize("meanwhile", ["redelivered", "endpoint deleted"])
def test_a_late_result_is_fenced(alice, agent, session_factory, hook, meanwhile):
    """The newer attempt decides after a redelivery. After the endpoint's deletion (and
    with it the delivery's) nothing is left to decide; the attempt's log row would have
    broken its foreign key (a traceback per deletion)."""
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = uuid.UUID(only_delivery(alice, endpoint["id"])["id"])

    def act():
        if meanwhile == "redelivered":
            assert alice.post(f"/v1/deliveries/{delivery_id}/redeliver").status_code == 202
        else:
            assert alice.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204

    assert outcome_when_meanwhile(session_factory, delivery_id, act) == "fenced"
    with session_factory() as session:
        left = session.get(WebhookDelivery, delivery_id)
        assert (left.status if left else None) == {"redelivered": "pending"}.get(meanwhile)


def test_a_record_tried_again_finds_its_attempt_already_logged(alice, agent, session_factory, hook):
    """A record whose COMMIT landed as its connection died is tried again
    (`webhook_delivery._reconnecting`); the second try must see the attempt and write
    nothing more."""
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    delivery_id = uuid.UUID(only_delivery(alice, endpoint["id"])["id"])
    assert deliver(session_factory, str(delivery_id)) == "succeeded"
    (logged,) = only_delivery(alice, endpoint["id"])["attempts"]
    with session_factory() as session:
        attempted_at = session.scalar(
            select(WebhookAttempt.attempted_at).where(WebhookAttempt.delivery_id == delivery_id)
        )
        found = webhook_delivery.recorded_status(session, delivery_id, attempted_at)
        other = webhook_delivery.recorded_status(
            session, delivery_id, attempted_at + dt.timedelta(microseconds=1)
        )
    assert (found, other) == ("succeeded", None)
    assert logged["status_code"] == 200


# --- the sweeper ------------------------------------------------------------------------


def test_the_sweeper_republishes_overdue_and_orphaned_deliveries(
    alice, agent, session_factory, published, hook
):
    endpoint = subscribe(alice, hook.url)
    run_job(alice, session_factory, agent)
    run_job(alice, session_factory, agent)
    waiting, orphan = (uuid.UUID(d["id"]) for d in deliveries(alice, endpoint["id"]))
    claimed_by_a_worker_that_died(session_factory, orphan)
    with session_factory.begin() as session:
        # The sweep looks at every delivery: those other tests committed (the lock-order
        # tests do) are ended inside this test's transaction, which is rolled back.
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.not_in([waiting, orphan]))
            .values(status="dead", next_attempt_at=None)
        )
    published.clear()
    with session_factory.begin() as session:
        swept = webhook_delivery.sweep(session, policy=POLICY)
    # `waiting` is due, but only just: its own message is still on its way.
    assert swept == [orphan] and waiting not in swept
    assert published.deliveries() == [str(orphan)]
    with session_factory.begin() as session:
        assert webhook_delivery.sweep(session, policy=POLICY) == []  # once per period
    assert deliver(session_factory, str(orphan)) == "succeeded"
    assert alice.get(f"/v1/deliveries/{orphan}").json["attempt_count"] == 2


# --- the SSRF guard at send time --------------------------------------------------------


def test_a_refused_address_is_never_connected_to(alice, agent, session_factory):
    """The job's own webhook_url is checked again at send time, with its name resolved.
    The app allowed 127.0.0.0/8 at submit; with a policy that no longer does, the attempt
    is refused and the listener sees no connection."""
    listener = Listener()
    try:
        job = run_job(
            alice, session_factory, agent, webhook_url=f"http://127.0.0.1:{listener.port}/x"
        )
        (delivery,) = alice.get(f"/v1/deliveries?job_id={job['id']}").json["items"]
        strict = WebhookPolicy(**{**POLICY.__dict__, "allowed_networks": ()})
        assert deliver(session_factory, delivery["id"], strict) == "failed"
        assert listener.connections() == 0
        shown = alice.get(f"/v1/deliveries/{delivery['id']}").json
        assert shown["last_error"] == "not sent: 127.0.0.1 is a loopback address"
    finally:
        listener.close()


def test_verification_uses_the_library_not_our_code():
    """The receiver's check is the standardwebhooks library's: a tampered body fails."""
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = webhook_delivery.sign("msg_1", b'{"a":1}', (secret,))
    assert Webhook(secret).verify(b'{"a":1}', headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
