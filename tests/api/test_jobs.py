import uuid

import pytest
from sqlalchemy import select, text, update

from models import Job
from services import job_execution, job_sweeper, job_transitions
from services.job_events import RUN_JOB_TASK
from services.job_policy import JobPolicy
from tests.helpers import AuthClient

POLICY = JobPolicy()


def run_queued(session_factory, job_id):
    """Run the job in-process, as a worker would after taking its message."""
    return job_execution.execute(session_factory, uuid.UUID(job_id), policy=POLICY)


@pytest.fixture
def agent(alice):
    return alice.create_agent(params={"delay_ms": 1})


def test_submit_answers_202_with_location(alice, agent):
    response = alice.post("/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "hi"}})
    assert response.status_code == 202
    job = response.json
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 0
    assert job["agent_version"] == 1 and job["max_attempts"] == 3


def test_submit_publishes_the_job_id_after_commit(alice, agent, redis_url):
    import json

    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete("agents")
    job = alice.submit(agent["id"])
    assert alice.client.application.extensions["conveyor"].publisher.flush()  # its thread sent it
    messages = [json.loads(raw) for raw in client.lrange("agents", 0, -1)]
    published = [m["headers"]["argsrepr"] for m in messages if m["headers"]["task"] == RUN_JOB_TASK]
    assert published == [repr((job["id"],))]


def test_rejected_submit_publishes_nothing(alice, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete("agents")
    response = alice.post("/v1/jobs", json={"agent_id": str(uuid.uuid4()), "input": {"text": "x"}})
    assert response.status_code == 422
    assert response.json["errors"][0]["field"] == "agent_id"
    assert alice.client.application.extensions["conveyor"].publisher.flush()
    assert client.llen("agents") == 0


def test_job_runs_to_succeeded_with_events(alice, agent, session_factory):
    job = alice.submit(agent["id"], text="hello")
    assert run_queued(session_factory, job["id"]) == "succeeded"
    done = alice.get(f"/v1/jobs/{job['id']}").json
    assert done["status"] == "succeeded"
    assert done["output"] == {"text": "hello"}
    assert done["attempt"] == 1 and done["started_at"] and done["finished_at"]
    events = alice.get(f"/v1/jobs/{job['id']}/events").json["items"]
    assert [e["type"] for e in events] == ["job.queued", "job.started", "job.succeeded"]
    assert [e["version"] for e in events] == [1, 2, 3]
    assert events[0]["stream"] == f"job-{job['id']}"
    assert events[1]["data"] == {"job_id": job["id"], "attempt": 1}
    assert events[-1]["data"] == {"job_id": job["id"], "attempt": 1, "output": {"text": "hello"}}


def test_events_carry_the_request_id_as_correlation_id(alice, agent, session_factory):
    response = alice.post(
        "/v1/jobs",
        json={"agent_id": agent["id"], "input": {"text": "x"}},
        headers={"X-Request-ID": "trace-42"},
    )
    run_queued(session_factory, response.json["id"])
    events = alice.get(f"/v1/jobs/{response.json['id']}/events").json["items"]
    assert [e["metadata"] for e in events] == [{"correlation_id": "trace-42"}] * 3


def test_second_delivery_does_nothing(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    assert run_queued(session_factory, job["id"]) == "succeeded"
    assert run_queued(session_factory, job["id"]) is None
    events = alice.get(f"/v1/jobs/{job['id']}/events").json["items"]
    assert len(events) == 3


def test_failing_agent_fails_the_job_with_a_clear_error(alice, session_factory):
    agent = alice.create_agent(params={"fail": "the model refused"})
    job = alice.submit(agent["id"])
    assert run_queued(session_factory, job["id"]) == "failed"
    failed = alice.get(f"/v1/jobs/{job['id']}").json
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "permanent", "message": "the model refused"}


def test_messages_input_is_echoed(alice, agent, session_factory):
    body = {"agent_id": agent["id"], "input": {"messages": [{"role": "user", "content": "yo"}]}}
    job = alice.post("/v1/jobs", json=body).json
    run_queued(session_factory, job["id"])
    assert alice.get(f"/v1/jobs/{job['id']}").json["output"] == body["input"]


def test_job_pins_agent_configuration(alice, session_factory):
    agent = alice.create_agent(params={})
    job = alice.submit(agent["id"])
    alice.patch(f"/v1/agents/{agent['id']}", json={"params": {"fail": "changed later"}})
    assert run_queued(session_factory, job["id"]) == "succeeded"
    assert alice.get(f"/v1/jobs/{job['id']}").json["agent_version"] == 1


def test_stale_worker_cannot_write_after_takeover(alice, agent, session):
    job_id = uuid.UUID(alice.submit(agent["id"])["id"])
    first = job_transitions.claim(session, job_id=job_id, policy=POLICY)
    assert first is not None
    # The first worker's lease runs out; the sweeper queues the job again for a new attempt.
    session.execute(
        update(Job).where(Job.id == job_id).values(lease_expires_at=text("now() - interval '1s'"))
    )
    # `in`: the sweep sees every job, and jobs other tests committed may be due as well.
    assert job_id in job_sweeper.sweep(session, policy=POLICY).requeued
    second = job_transitions.claim(session, job_id=job_id, policy=POLICY)
    assert second is not None and second.attempt == 2
    assert job_transitions.finish(session, first, "succeeded", output={"text": "late"}) is False
    assert job_transitions.finish(session, second, "succeeded", output={"text": "current"}) is True
    row = session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    assert row.output == {"text": "current"} and row.attempt == 2


@pytest.mark.parametrize(
    "body",
    [
        {"input": {"text": "x"}},
        {"agent_id": "not-a-uuid", "input": {"text": "x"}},
        {"agent_id": "00000000-0000-0000-0000-000000000000", "input": {}},
        {"agent_id": "00000000-0000-0000-0000-000000000000", "input": {"text": "x", "evil": 1}},
        {
            "agent_id": "00000000-0000-0000-0000-000000000000",
            "input": {"text": "x"},
            "status": "succeeded",
        },
        {
            "agent_id": "00000000-0000-0000-0000-000000000000",
            "input": {"text": "x"},
            "max_attempts": 99,
        },
        {
            "agent_id": "00000000-0000-0000-0000-000000000000",
            "input": {"text": "x"},
            "webhook_url": "ftp://x",
        },
    ],
)
def test_submit_validation(alice, body):
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert alice.get("/v1/jobs").json["items"] == []


@pytest.mark.parametrize("field", ["timeout_s", "queue_timeout_s", "max_attempts"])
@pytest.mark.parametrize("value", [True, "5", 5.0])
def test_a_count_must_be_a_json_integer(alice, agent, field, value):
    """Not a boolean, a string or a float that happens to be whole: lax coercion would
    read `true` as 1."""
    body = {"agent_id": agent["id"], "input": {"text": "x"}, field: value}
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.json
    assert [e["field"] for e in response.json["errors"]] == [field]
    assert alice.get("/v1/jobs").json["items"] == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "a loopback address"),
        ("http://169.254.169.254/latest", "a cloud metadata address"),
        ("http://10.1.2.3/hook", "a private address"),
        ("http://localhost:8080/hook", "a loopback address"),
        ("http://2130706433/hook", "a loopback address"),  # pydantic writes it 127.0.0.1
    ],
)
def test_a_webhook_url_no_delivery_may_reach_is_422_at_submit(alice, agent, url, why):
    """Addresses written in the URL are refused at once, as `POST /v1/webhooks` refuses
    them; names are resolved only when a delivery is sent."""
    response = alice.post(
        "/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "x"}, "webhook_url": url}
    )
    assert response.status_code == 422
    (error,) = response.json["errors"]
    assert error["field"] == "webhook_url" and why in error["detail"]
    assert alice.get("/v1/jobs").json["items"] == []


def test_documents_the_input_names_must_be_the_owners_and_live(alice, bob, agent):
    def document(client):
        return client.post("/v1/documents", json={"title": "t", "content": "c"}).json["id"]

    live, deleted, bobs = document(alice), document(alice), document(bob)
    assert alice.delete(f"/v1/documents/{deleted}").status_code == 204
    named = [live, deleted, bobs, str(uuid.uuid4())]
    body = {"agent_id": agent["id"], "input": {"text": "x", "documents": named}}
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json["errors"]] == [
        "input.documents.1",
        "input.documents.2",
        "input.documents.3",
    ]
    assert alice.get("/v1/jobs").json["items"] == []
    body["input"]["documents"] = [live]
    assert alice.post("/v1/jobs", json=body).status_code == 202


def test_timeout_above_the_limit_is_422(alice, agent, app):
    limit = app.extensions["conveyor"].settings.job_max_timeout_s
    body = {"agent_id": agent["id"], "input": {"text": "x"}, "timeout_s": limit + 1}
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.json["errors"][0]["field"] == "timeout_s"


def test_list_filters_and_pages(alice, agent, session_factory):
    other_agent = alice.create_agent(name="other")
    first = alice.submit(agent["id"])
    second = alice.submit(agent["id"])
    third = alice.submit(other_agent["id"])
    run_queued(session_factory, first["id"])
    by_status = alice.get("/v1/jobs?status=queued").json["items"]
    assert [j["id"] for j in by_status] == [third["id"], second["id"]]
    by_agent = alice.get(f"/v1/jobs?agent_id={agent['id']}&limit=1").json
    assert [j["id"] for j in by_agent["items"]] == [second["id"]]
    rest = alice.get(f"/v1/jobs?agent_id={agent['id']}&cursor={by_agent['next_cursor']}").json
    assert [j["id"] for j in rest["items"]] == [first["id"]]
    assert rest["next_cursor"] is None


def test_jobs_are_invisible_to_other_owners(alice, bob, agent):
    job = alice.submit(agent["id"])
    assert bob.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert bob.get(f"/v1/jobs/{job['id']}/events").status_code == 404
    assert bob.get("/v1/jobs").json["items"] == []
    stolen = bob.post("/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "x"}})
    assert stolen.status_code == 422


def test_wait_returns_at_once_for_a_terminal_job(alice, agent, session_factory):
    job = alice.submit(agent["id"])
    run_queued(session_factory, job["id"])
    response = alice.get(f"/v1/jobs/{job['id']}?wait=30")
    assert response.json["status"] == "succeeded"


def test_wait_times_out_with_the_current_state(alice, agent):
    job = alice.submit(agent["id"])
    response = alice.get(f"/v1/jobs/{job['id']}?wait=0.2")
    assert response.status_code == 200 and response.json["status"] == "queued"


def test_wait_above_limit_is_422(alice, agent):
    job = alice.submit(agent["id"])
    assert alice.get(f"/v1/jobs/{job['id']}?wait=31").status_code == 422


def test_wait_that_is_not_a_finite_number_says_so(alice, agent):
    """`nan` was refused as not "less than or equal to 30"."""
    job = alice.submit(agent["id"])
    answer = alice.get(f"/v1/jobs/{job['id']}?wait=nan")
    assert answer.status_code == 422 and "finite" in answer.json["errors"][0]["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/" + "a" * 2100,  # too long as sent
        "https://example.com/" + "\u00e9" * 400,  # 800 characters, 2,420 once percent-encoded
    ],
)
def test_a_webhook_url_too_long_is_a_422_on_the_field(alice, agent, app, url):
    """It named `body`, as if the whole request were wrong, and the document gave no
    maximum."""
    body = {"agent_id": agent["id"], "input": {"text": "x"}, "webhook_url": url}
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422
    (error,) = response.json["errors"]
    assert error["field"] == "webhook_url" and "2048" in error["detail"]
    assert alice.get("/v1/jobs").json["items"] == []
    schema = app.test_client().get("/openapi.json").json["components"]["schemas"]["JobIn"]
    as_url = next(b for b in schema["properties"]["webhook_url"]["anyOf"] if "format" in b)
    assert as_url["maxLength"] == 2048


def test_a_tool_message_in_the_input_is_refused(alice, agent, spec_schemas):
    """A tool message answers a model's tool call by its id, which the input cannot carry:
    a chat provider refuses one without (OpenAI: 400), so each such job failed at its run."""
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    body = {"agent_id": agent["id"], "input": {"messages": messages}}
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json["errors"]] == ["input.messages.1.role"]
    assert alice.get("/v1/jobs").json["items"] == []
    assert spec_schemas["JobIn.Message"]["properties"]["role"]["enum"] == [
        "system",
        "user",
        "assistant",
    ]


@pytest.fixture
def spec_schemas(client):
    return client.get("/openapi.json").json["components"]["schemas"]


def test_the_defaults_are_held_to_the_maxima(app_with, alice, agent, session):
    """JOB_DEFAULT_QUEUE_TIMEOUT_S (3600) above a lowered JOB_MAX_QUEUE_TIMEOUT_S, or
    JOB_DEFAULT_TIMEOUT_S (300) above JOB_MAX_TIMEOUT_S, gave every job that named none
    more than the deployment allows a job that names one."""
    app = app_with(job_max_queue_timeout_s=600, job_max_timeout_s=60)
    user = AuthClient(app.test_client(), alice.email, alice.tokens)
    job = user.submit(agent["id"])
    assert job["timeout_s"] == 60
    stored = session.scalar(select(Job.queue_timeout_s).where(Job.id == uuid.UUID(job["id"])))
    assert stored == 600


def test_a_jobs_queue_timeout_is_shown_as_its_timeout_is(alice, agent, client):
    """A client could set `queue_timeout_s` but never read it back: the job's answers
    showed `timeout_s` and `max_attempts`, not what it may wait in the queue."""
    job = alice.submit(agent["id"], queue_timeout_s=120)
    assert job["queue_timeout_s"] == 120
    assert alice.get(f"/v1/jobs/{job['id']}").json["queue_timeout_s"] == 120
    assert alice.get("/v1/jobs").json["items"][0]["queue_timeout_s"] == 120
    assert alice.submit(agent["id"])["queue_timeout_s"] == 3600  # the default
    schema = client.get("/openapi.json").json["components"]["schemas"]["JobOut"]
    assert "queue_timeout_s" in schema["required"]
