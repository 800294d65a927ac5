"""Admission control: a request that cannot get a slot in time is answered 503 at once,
before authentication; probes pass; slots come back."""

from __future__ import annotations

import time

from tests.helpers import AuthClient


def test_a_request_that_waits_too_long_for_a_slot_gets_503(make_app):
    app = make_app(admission_slots=1, admission_max_wait_ms=50)
    client = app.test_client()
    admission = app.extensions["conveyor.admission"]
    with app.test_request_context("/v1/jobs"):
        admission.enter()  # the only slot is taken
        started = time.monotonic()
        refused = client.get("/v1/jobs")  # no credentials: it never gets that far
        waited = time.monotonic() - started
        probe = client.get("/healthz")
    assert refused.status_code == 503
    assert refused.mimetype == "application/problem+json"
    assert refused.json["type"] == "/problems/overloaded"
    assert refused.headers["Retry-After"] == "1"
    assert 0.04 <= waited < 1.0
    assert probe.status_code == 200
    # The slot came back with the request that held it: the next one is served.
    assert client.get("/v1/jobs").status_code == 401


def test_waiting_requests_give_their_slot_back(make_app):
    """A long-poll holds a thread but not a slot: with one slot, a request made while a
    long-poll waits is served."""
    import threading

    app = make_app(admission_slots=1, admission_max_wait_ms=200)
    client = app.test_client()
    me = AuthClient.register(client, f"waiter-{time.time_ns()}@example.com")
    agent = me.post("/v1/agents", json={"name": "a", "provider": "echo", "model": "echo"})
    job = me.post("/v1/jobs", json={"agent_id": agent.json["id"], "input": {"text": "x"}})
    assert job.status_code == 202
    waiting = threading.Thread(target=lambda: me.get(f"/v1/jobs/{job.json['id']}?wait=2"))
    waiting.start()
    try:
        deadline = time.monotonic() + 5
        while not app.extensions["conveyor"].notifier._waiters:
            assert time.monotonic() < deadline, "the long-poll never started waiting"
            time.sleep(0.01)
        # No credentials: it takes a slot, then fails without touching the database (the
        # test's one connection is the long-poll's meanwhile). Held slot: 503; free: 401.
        assert app.test_client().get("/v1/agents").status_code == 401
    finally:
        waiting.join(10)
