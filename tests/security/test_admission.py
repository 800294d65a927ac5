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


def test_while_the_process_is_behind_a_request_waits_only_the_short_budget(make_app):
    """One slot, taken; one request already waiting for it makes the process behind
    (ADMISSION_BEHIND_QUEUE=1): the next is refused after the short wait, not the long one."""
    import threading

    app = make_app(
        admission_slots=1,
        admission_max_wait_ms=5000,
        admission_behind_wait_ms=50,
        admission_behind_queue=1,
    )
    admission = app.extensions["conveyor.admission"]
    with app.test_request_context("/v1/jobs"):
        admission.enter()  # the only slot is taken
        first = threading.Thread(target=lambda: app.test_client().get("/v1/jobs"))
        first.start()  # waits for the slot, up to the long budget: the process is behind
        deadline = time.monotonic() + 5
        while not admission.behind():
            assert time.monotonic() < deadline, "the first request never started waiting"
            time.sleep(0.005)
        started = time.monotonic()
        refused = app.test_client().get("/v1/jobs")
        waited = time.monotonic() - started
        assert refused.status_code == 503
        assert 0.04 <= waited < 1.0
    first.join(10)  # the slot came back with the context; the first one was served
    assert not admission.behind()


def test_the_server_refuses_at_once_a_request_that_waited_its_budget_while_behind(make_app):
    """The server's check (`admit`, api/server_worker.py): a request that waited 200 ms
    for a thread is admitted while the process is only busy, refused without waiting more
    while it is behind, and one that just arrived is admitted either way."""
    from api import admission as control

    app = make_app(admission_behind_wait_ms=50, admission_behind_queue=2)
    admission = app.extensions["conveyor.admission"]
    control.mark_arrival(time.monotonic() - 0.2)  # this thread's request arrived 200 ms ago
    assert admission.admit() is True  # busy is not behind: within the long budget
    admission.release_unclaimed()
    for _ in range(4):
        control.mark_queued()  # four more requests queued for a thread
    try:
        control.mark_arrival(time.monotonic() - 0.2)  # one of them, 200 ms old: 3 queued
        assert admission.behind()
        started = time.monotonic()
        assert admission.admit() is False
        assert time.monotonic() - started < 0.05  # at once, not after another wait
        control.mark_arrival(time.monotonic())  # one just arrived: 2 queued, still behind
        assert admission.behind()
        assert admission.admit() is True
        admission.release_unclaimed()
    finally:
        for _ in range(2):
            control.mark_arrival(None)
    assert not admission.behind()


def test_the_application_takes_over_the_slot_the_server_took(make_app):
    """With one slot: the server's slot passes to the application's own check (which would
    otherwise wait for a second one and refuse), and comes back once, whichever gives it
    back; a slot the application never took comes back from the server."""
    from api import admission as control
    from api.admission import Admission

    app = make_app(admission_slots=1, admission_max_wait_ms=50)
    admission = app.extensions["conveyor.admission"]
    for _ in range(2):
        control.mark_arrival(None)
        assert admission.admit() is True
        with app.test_request_context("/v1/jobs"):
            admission.enter()  # no Overloaded: the server's slot is this request's
            Admission.leave()
        admission.release_unclaimed()  # nothing left to give back; twice would raise
    control.mark_arrival(None)
    assert admission.admit() is True  # a request that failed before the hooks
    admission.release_unclaimed()
    assert app.test_client().get("/v1/jobs").status_code == 401  # the slot is free


def test_the_servers_own_503_is_the_problem_document_the_application_sends():
    import http.client
    import io
    import json

    from api.server_worker import overloaded_response

    class _Socket:
        def __init__(self, data: bytes) -> None:
            self._file = io.BytesIO(data)

        def makefile(self, *_args: object, **_kwargs: object) -> io.BytesIO:
            return self._file

    response = http.client.HTTPResponse(_Socket(overloaded_response("req-1")))  # type: ignore[arg-type]
    response.begin()
    assert response.status == 503
    assert response.getheader("Content-Type") == "application/problem+json"
    assert response.getheader("Retry-After") == "1"
    assert response.getheader("X-Request-ID") == "req-1"
    assert json.loads(response.read()) == {
        "type": "/problems/overloaded",
        "title": "Service overloaded",
        "status": 503,
        "detail": "the server is at capacity; retry shortly",
        "request_id": "req-1",
    }
