"""Cancel, retry, idempotency, backpressure and live streams through the HTTP API."""

import datetime as dt
import json
import time
import uuid

import pytest
import redis
from sqlalchemy import func, select

from api.rate_limits import make_gate
from models import Job
from services import job_execution
from services.agent_errors import TransientAgentError
from services.job_policy import JobPolicy
from tests.helpers import age, queue_wait, sent_twice
from workers.redis_clients import make_redis

POLICY = JobPolicy(retry_base_s=0.01)


def run(session_factory, job_id):
    return job_execution.execute(session_factory, uuid.UUID(job_id), policy=POLICY)


@pytest.fixture
def agent(alice):
    return alice.create_agent()


def event_types(client, job_id):
    return [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events").json["items"]]


# --- cancel -----------------------------------------------------------------------------


def test_cancel_a_queued_job_at_once(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    response = alice.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json["status"] == "cancelled"
    assert response.json["finished_at"] is not None
    # Its message may still arrive: the worker finds nothing to run.
    assert run(session_factory, job["id"]) is None
    assert event_types(alice, job["id"]) == ["job.queued", "job.cancelled"]


def test_cancel_a_finished_job_is_409(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    run(session_factory, job["id"])
    response = alice.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json["status"] == 409  # the problem's own member (RFC 9457)
    assert response.json["job_status"] == "succeeded"


def test_cancel_someone_elses_job_is_404(alice, bob, agent):
    job = alice.submit(agent["id"])
    assert bob.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert alice.get(f"/v1/jobs/{job['id']}").json["status"] == "queued"


def test_a_cancel_asked_for_before_a_transient_failure_ends_the_job_cancelled(
    alice, agent, session_factory
):
    """The cancel was lost: the failure queued the job again, and its next attempt ran."""
    job = alice.submit(agent["id"], webhook_url="https://example.com/hook")

    def cancelled_then_failing(config, job_input, *, control):
        # The cancel lands while the attempt runs, before its failure is written.
        asked = alice.post(f"/v1/jobs/{job['id']}/cancel")
        assert (asked.status_code, asked.json["status"]) == (200, "running")
        raise TransientAgentError("the provider answered 503")

    # The watcher stays away from the database: the runner's thread uses the connection.
    quiet = JobPolicy(lease_s=3600, cancel_poll_s=3600, retry_base_s=0.01)
    job_id = uuid.UUID(job["id"])
    ended = job_execution.execute(
        session_factory, job_id, policy=quiet, runner=cancelled_then_failing
    )
    assert ended == "cancelled"
    cancelled = alice.get(f"/v1/jobs/{job['id']}").json
    assert (cancelled["status"], cancelled["attempt"], cancelled["error"]) == ("cancelled", 1, None)
    assert cancelled["finished_at"] is not None
    events = alice.get(f"/v1/jobs/{job['id']}/events").json["items"]
    assert [e["type"] for e in events] == [
        "job.queued", "job.started", "job.cancel_requested", "job.cancelled",
    ]  # fmt: skip
    assert events[-1]["data"]["attempt"] == 1 and "reason" in events[-1]["data"]
    # Told as any cancel is: the job's webhook_url gets its delivery.
    [delivery] = alice.get(f"/v1/deliveries?job_id={job['id']}").json["items"]
    assert delivery["event_type"] == "job.cancelled"
    # No message runs it again; a manual retry does (it forgets the old cancel request).
    assert run(session_factory, job["id"]) is None
    assert alice.post(f"/v1/jobs/{job['id']}/retry").status_code == 202
    assert run(session_factory, job["id"]) == "succeeded"
    assert alice.get(f"/v1/jobs/{job['id']}").json["attempt"] == 2


# --- retries ----------------------------------------------------------------------------


def test_transient_failures_are_retried_with_backoff(alice, session_factory):
    agent = alice.create_agent(params={"transient_failures": 2})
    job = alice.submit(agent["id"])
    assert run(session_factory, job["id"]) == "queued"
    first = alice.get(f"/v1/jobs/{job['id']}").json
    assert first["status"] == "queued" and first["error"]["type"] == "transient"
    # A delivery before the backoff has passed finds nothing to claim.
    assert run(session_factory, job["id"]) is None
    with session_factory.begin() as session:
        session.execute(Job.__table__.update().values(run_after=None))
    assert run(session_factory, job["id"]) == "queued"
    with session_factory.begin() as session:
        session.execute(Job.__table__.update().values(run_after=None))
    assert run(session_factory, job["id"]) == "succeeded"
    done = alice.get(f"/v1/jobs/{job['id']}").json
    assert done["attempt"] == 3 and done["output"] == {"text": "hello"}
    assert event_types(alice, job["id"]).count("job.retry_scheduled") == 2


def test_a_transient_failure_gives_the_job_its_queue_timeout_again_after_the_backoff(
    alice, agent, session_factory
):
    """The attempt ran longer than the job's queue timeout, then failed transiently. The
    job had waited only a moment in the queue: it was timed out as if it had waited since
    its submit, at its next claim or by the sweeper."""
    job = alice.submit(agent["id"], queue_timeout_s=60)
    job_id = uuid.UUID(job["id"])

    def slow_then_failing(config, job_input, *, control):
        age(session_factory, job_id, 120)  # two minutes pass while it runs
        raise TransientAgentError("the provider answered 503")

    # The watcher stays away from the database: the runner's thread uses the connection.
    quiet = JobPolicy(lease_s=3600, cancel_poll_s=3600, retry_base_s=30, retry_max_s=30)
    ended = job_execution.execute(session_factory, job_id, policy=quiet, runner=slow_then_failing)
    assert ended == "queued"
    assert queue_wait(session_factory, job_id) == dt.timedelta(seconds=60)  # from run_after
    with session_factory.begin() as session:  # the backoff is over
        session.execute(Job.__table__.update().where(Job.id == job_id).values(run_after=None))
    assert run(session_factory, job["id"]) == "succeeded"
    assert alice.get(f"/v1/jobs/{job['id']}").json["attempt"] == 2


def test_each_manual_retry_gives_the_job_its_queue_timeout_again(alice, agent, session_factory):
    """Not more: the retry counted the timeout from the submit, and each gave the job the
    time since then on top (an hour here, then two)."""
    job = alice.submit(agent["id"], queue_timeout_s=60)
    for _ in range(3):
        assert alice.post(f"/v1/jobs/{job['id']}/cancel").json["status"] == "cancelled"
        age(session_factory, job["id"], 3600)  # retried an hour later
        assert alice.post(f"/v1/jobs/{job['id']}/retry").status_code == 202
        assert queue_wait(session_factory, job["id"]) == dt.timedelta(seconds=60)


def test_transient_failure_on_the_last_attempt_fails(alice, session_factory):
    agent = alice.create_agent(params={"transient_failures": 5})
    job = alice.submit(agent["id"], max_attempts=1)
    assert run(session_factory, job["id"]) == "failed"
    failed = alice.get(f"/v1/jobs/{job['id']}").json
    assert failed["error"] == {
        "type": "transient",
        "message": "simulated transient failure on attempt 1",
    }


class TimeLimit(Exception):
    """Stands for Celery's SoftTimeLimitExceeded, raised into the runner by its host."""


def interrupted_inside_a_library(config, job_input, *, control):
    try:
        raise TimeLimit()
    except TimeLimit:  # as psycopg's wait did: its rollback of the statement failed too
        raise RuntimeError("cannot rollback: the connection is busy") from None


@pytest.mark.parametrize("cause", ["cause", "context"])
def test_a_time_limit_hidden_by_a_librarys_own_error_still_times_the_job_out(
    alice, agent, session_factory, cause
):
    """It ended the job `failed` as an internal error of ours."""

    def runner(config, job_input, *, control):
        try:
            interrupted_inside_a_library(config, job_input, control=control)
        except RuntimeError as error:
            if cause == "cause":
                raise ValueError("wrapped") from error.__context__
            raise

    job = alice.submit(agent["id"])
    status = job_execution.execute(
        session_factory, uuid.UUID(job["id"]), policy=POLICY, runner=runner, interrupts=(TimeLimit,)
    )
    assert status == "timed_out"
    ended = alice.get(f"/v1/jobs/{job['id']}").json
    assert ended["status"] == "timed_out" and ended["error"]["type"] == "timeout"


def test_permanent_failure_is_not_retried(alice, session_factory):
    agent = alice.create_agent(params={"fail": "bad instructions"})
    job = alice.submit(agent["id"])
    assert run(session_factory, job["id"]) == "failed"
    assert alice.get(f"/v1/jobs/{job['id']}").json["attempt"] == 1


def test_manual_retry_runs_a_failed_job_again(alice, session_factory):
    agent = alice.create_agent(params={"fail": "nope"})
    job = alice.submit(agent["id"], max_attempts=1)
    run(session_factory, job["id"])
    response = alice.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 202
    retried = response.json
    assert retried["status"] == "queued" and retried["error"] is None
    assert retried["max_attempts"] == 2 and retried["finished_at"] is None
    assert run(session_factory, job["id"]) == "failed"
    assert alice.get(f"/v1/jobs/{job['id']}").json["attempt"] == 2
    assert event_types(alice, job["id"]).count("job.retried") == 1


def test_retry_of_a_queued_or_succeeded_job_is_409(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    queued = alice.post(f"/v1/jobs/{job['id']}/retry")
    assert (queued.status_code, queued.json["status"]) == (409, 409)
    assert queued.json["job_status"] == "queued"
    run(session_factory, job["id"])
    succeeded = alice.post(f"/v1/jobs/{job['id']}/retry")
    assert (succeeded.status_code, succeeded.json["job_status"]) == (409, "succeeded")


def test_retry_of_a_job_whose_agent_was_deleted_is_409(alice, session_factory):
    """It ran again: a deleted agent takes no new jobs, and a retry is one."""
    agent = alice.create_agent(params={"fail": "nope"})
    job = alice.submit(agent["id"], max_attempts=1)
    assert run(session_factory, job["id"]) == "failed"
    assert alice.delete(f"/v1/agents/{agent['id']}").status_code == 204
    response = alice.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 409 and response.json["job_status"] == "failed"
    assert "deleted" in response.json["detail"]
    assert alice.get(f"/v1/jobs/{job['id']}").json["status"] == "failed"
    assert "job.retried" not in event_types(alice, job["id"])


# --- idempotency ------------------------------------------------------------------------


def count_jobs(session_factory, client):
    """How many jobs the client's user has (other tests may leave committed jobs behind)."""
    owner = uuid.UUID(client.get("/v1/auth/me").json["id"])
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner))


def test_same_key_and_body_replays_the_first_answer(alice, agent, session_factory):
    body = {"agent_id": agent["id"], "input": {"text": "once"}}
    headers = {"Idempotency-Key": "order-1"}
    first, second = sent_twice(alice, "/v1/jobs", body, headers, 202)
    assert second.headers["Location"] == first.headers["Location"]
    assert count_jobs(session_factory, alice) == 1


def test_same_key_with_another_body_is_422(alice, agent, session_factory):
    headers = {"Idempotency-Key": "order-2"}
    alice.post("/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "a"}}, headers=headers)
    other = alice.post(
        "/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "b"}}, headers=headers
    )
    assert other.status_code == 422
    assert other.json["errors"][0]["field"] == "Idempotency-Key"
    assert count_jobs(session_factory, alice) == 1


def test_keys_are_scoped_to_the_owner(alice, bob, agent):
    bob_agent = bob.create_agent()
    headers = {"Idempotency-Key": "shared"}
    a = alice.post(
        "/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "a"}}, headers=headers
    )
    b = bob.post(
        "/v1/jobs", json={"agent_id": bob_agent["id"], "input": {"text": "a"}}, headers=headers
    )
    assert a.status_code == b.status_code == 202
    assert a.json["id"] != b.json["id"]


def test_a_key_in_flight_is_409(alice, agent, engine):
    # Another transaction holds the key's lock, as a first request still running would.
    owner = alice.get("/v1/auth/me").json["id"]
    with engine.connect() as other:
        other.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"{owner}:busy-key", 0)))
        )
        response = alice.post(
            "/v1/jobs",
            json={"agent_id": agent["id"], "input": {"text": "x"}},
            headers={"Idempotency-Key": "busy-key"},
        )
        other.rollback()
    assert response.status_code == 409


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
def test_malformed_keys_are_422(alice, agent, key):
    response = alice.post(
        "/v1/jobs",
        json={"agent_id": agent["id"], "input": {"text": "x"}},
        headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1")},
    )
    assert response.status_code == 422


def test_a_failed_request_stores_no_answer(alice, agent, session_factory):
    headers = {"Idempotency-Key": "after-error"}
    bad = alice.post(
        "/v1/jobs", json={"agent_id": str(uuid.uuid4()), "input": {"text": "x"}}, headers=headers
    )
    assert bad.status_code == 422
    good = alice.post(
        "/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "x"}}, headers=headers
    )
    assert good.status_code == 202


# --- backpressure and dependencies ------------------------------------------------------


def test_full_queue_answers_503_and_writes_nothing(alice, agent, app, redis_url, session_factory):
    runtime = app.extensions["conveyor"]
    client = redis.Redis.from_url(redis_url)
    client.delete("agents")
    client.rpush("agents", *[json.dumps({"filler": i}) for i in range(3)])
    try:
        object.__setattr__(runtime, "job_policy", JobPolicy(max_queue_depth=3))
        response = alice.post("/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "x"}})
    finally:
        client.delete("agents")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.mimetype == "application/problem+json"
    assert count_jobs(session_factory, alice) == 0


def test_a_retry_into_a_full_queue_is_refused_as_a_submit_is_and_changes_nothing(
    alice, agent, app, redis_url
):
    """It was queued whatever the queue's depth: a retry is new work."""
    runtime = app.extensions["conveyor"]
    policy = runtime.job_policy
    client = redis.Redis.from_url(redis_url)
    client.delete("agents")
    client.rpush("agents", *[json.dumps({"filler": i}) for i in range(3)])
    try:
        job = alice.submit(agent["id"])  # room enough under the default depth
        cancelled = alice.post(f"/v1/jobs/{job['id']}/cancel").json
        object.__setattr__(runtime, "job_policy", JobPolicy(max_queue_depth=3))
        assert runtime.publisher.flush()  # the web's publishing thread has sent the submit's
        waiting = client.llen("agents")
        submitted = alice.post("/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "x"}})
        retried = alice.post(f"/v1/jobs/{job['id']}/retry")
        assert runtime.publisher.flush()
        assert client.llen("agents") == waiting
    finally:
        client.delete("agents")
        object.__setattr__(runtime, "job_policy", policy)
    assert (submitted.status_code, retried.status_code) == (503, 503)
    assert retried.mimetype == "application/problem+json"
    assert retried.headers["Retry-After"] == submitted.headers["Retry-After"]
    assert int(retried.headers["Retry-After"]) > 0
    problem = {k: v for k, v in retried.json.items() if k != "request_id"}
    assert problem == {k: v for k, v in submitted.json.items() if k != "request_id"}
    assert alice.get(f"/v1/jobs/{job['id']}").json == cancelled
    assert event_types(alice, job["id"]) == ["job.queued", "job.cancelled"]
    # With room in the queue, the same retry goes ahead.
    assert alice.post(f"/v1/jobs/{job['id']}/retry").status_code == 202


def test_redis_down_is_503_not_500(alice, app):
    runtime = app.extensions["conveyor"]
    runtime.redis = make_redis("redis://127.0.0.1:1/0", timeout_s=5)  # nothing listens there
    runtime.gate = make_gate(runtime.settings, runtime.redis, runtime.revocations)
    started = time.monotonic()
    response = alice.get("/v1/auth/me")
    assert time.monotonic() - started < 2  # promptly, not after seconds of retries
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert "Traceback" not in response.get_data(as_text=True)


# --- live stream ------------------------------------------------------------------------


def read_stream(response):
    frames = []
    for block in response.get_data(as_text=True).split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if fields:
            frames.append(fields)
    return frames


def test_stream_of_a_finished_job_replays_and_ends(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    run(session_factory, job["id"])
    response = alice.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    frames = read_stream(response)
    assert [f["event"] for f in frames] == ["job.queued", "job.started", "job.succeeded"]
    assert [f["id"] for f in frames] == ["1", "2", "3"]
    assert json.loads(frames[-1]["data"])["data"]["output"] == {"text": "hello"}


def test_stream_resumes_after_last_event_id(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    run(session_factory, job["id"])
    response = alice.get(
        f"/v1/jobs/{job['id']}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "2"},
    )
    assert [f["event"] for f in read_stream(response)] == ["job.succeeded"]


@pytest.mark.parametrize(
    ("query", "headers", "ids"),
    [
        ("?from_version=2", {}, ["2", "3"]),
        ("?cursor=3", {}, ["3"]),
        ("?from_version=2", {"Last-Event-ID": "2"}, ["3"]),  # the header wins, as on streams
    ],
)
def test_stream_starts_where_the_query_says(alice, agent, session_factory, query, headers, ids):
    """`from_version` (or `cursor`) was read for pages only: the live stream began at
    version 1 whatever the query said, where a stream's and the feed's tails start there."""
    job = alice.submit(agent["id"])
    run(session_factory, job["id"])
    response = alice.get(
        f"/v1/jobs/{job['id']}/events{query}",
        headers={"Accept": "text/event-stream", **headers},
    )
    assert response.status_code == 200
    assert [f["id"] for f in read_stream(response)] == ids


def test_stream_of_a_retried_job_goes_on_past_its_first_ending(alice, session_factory):
    """The stream ended at the first terminal event it met: a fresh client of a job that
    failed and was retried saw `job.failed` and the end while the job ran again."""
    agent = alice.create_agent(params={"fail": "nope"})
    job = alice.submit(agent["id"], max_attempts=1)
    run(session_factory, job["id"])
    assert alice.post(f"/v1/jobs/{job['id']}/retry").status_code == 202
    run(session_factory, job["id"])
    response = alice.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert [f["event"] for f in read_stream(response)] == [
        "job.queued",
        "job.started",
        "job.failed",
        "job.retried",
        "job.started",
        "job.failed",
    ]


def test_stream_of_someone_elses_job_is_404(alice, bob, agent):
    job = alice.submit(agent["id"])
    response = bob.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert response.status_code == 404
