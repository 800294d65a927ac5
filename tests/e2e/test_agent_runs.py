"""An agent on an OpenAI-compatible provider through real processes: the worker streams
from the fake provider, a cancel or a timeout stops it mid-stream, and the worker holds
the model and its tools to the bounds it is configured with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import Servers
from tests.fake_openai import FakeOpenAI, Turn
from tests.stack import Api, Scenario, stack_on

pytestmark = pytest.mark.e2e

WORKER_CONVERSATION_BYTES = 64 * 1024  # the least it takes
WORKER_EVENT_DATA_BYTES = 1024  # the least it takes; the web's is 64 KiB


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def running(
    servers: Servers,
    worker_id: str,
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeOpenAI,
) -> Iterator[tuple[Scenario, Api]]:
    workdir = tmp_path_factory.mktemp("agent-runs")
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-e2e", "JOB_GRACE_S": "1"}
    with stack_on(servers, worker_id, workdir, "agents", **env) as scenario:
        api = scenario.stack.start_web()
        # Small bounds of the worker's own (the web keeps its defaults), so that what the
        # tests below see is how the worker reads and passes on its settings: the
        # conversation's bound under its deprecated name, an event's data for its tools.
        scenario.stack.start_worker(
            concurrency=2,
            LLM_MAX_ANSWER_BYTES=str(WORKER_CONVERSATION_BYTES),
            EVENT_MAX_DATA_BYTES=str(WORKER_EVENT_DATA_BYTES),
        )
        api.sign_up()
        yield scenario, api


def create_agent(api: Api) -> str:
    body = {"name": "llm", "provider": "openai", "model": "fake", "instructions": "hi"}
    reply = api.post("/v1/agents", body)
    assert reply.status == 201, reply
    return str(reply.body["id"])


def test_a_streamed_answer_arrives_as_events(running, fake):
    scenario, api = running
    fake.then(Turn(text="streamed through a real worker", chunk_size=5))
    with scenario.stack.logs_on_failure():
        job_id = api.submit(create_agent(api), "go").body["id"]
        job = api.wait_terminal(job_id, timeout=30)
        assert job["status"] == "succeeded", job
        assert job["output"]["text"] == "streamed through a real worker"
        types = [t for _, t in api.event_types(job_id)]
        assert types[:3] == ["job.queued", "job.started", "job.step.started"]
        assert "job.output.delta" in types and types[-1] == "job.succeeded"


def test_cancel_stops_a_run_mid_stream(running, fake):
    scenario, api = running
    # A slow model: a chunk every 0.3 s for about 30 s.
    fake.then(Turn(text="x" * 100, chunk_size=1, chunk_delay_s=0.3))
    with scenario.stack.logs_on_failure():
        job_id = api.submit(create_agent(api), "slow").body["id"]
        scenario.stack.within(
            20,
            lambda: "job.output.delta" in [t for _, t in api.event_types(job_id)],
            "no output arrived",
        )
        asked_at = time.monotonic()
        assert api.post(f"/v1/jobs/{job_id}/cancel").status == 200
        job = api.wait_terminal(job_id, timeout=15)
        assert job["status"] == "cancelled", job
        assert time.monotonic() - asked_at < 3.0
        assert [t for _, t in api.event_types(job_id)][-1] == "job.cancelled"


def test_a_run_past_its_timeout_ends_timed_out(running, fake):
    scenario, api = running
    fake.then(Turn(text="y" * 100, chunk_size=1, chunk_delay_s=0.3))
    with scenario.stack.logs_on_failure():
        reply = api.post(
            "/v1/jobs",
            {"agent_id": create_agent(api), "input": {"text": "slow"}, "timeout_s": 2},
        )
        assert reply.status == 202, reply
        job = api.wait_terminal(reply.body["id"], timeout=20)
        assert job["status"] == "timed_out", job
        assert job["error"]["type"] == "timeout"
        assert job["attempt"] == 1


@pytest.mark.parametrize("stop", ["cancel", "timeout"])
def test_a_tool_blocked_in_the_database_is_stopped_and_its_write_never_lands(running, fake, stop):
    """A tool waiting for a row another writer held kept the attempt past its deadline
    (ended `internal`), and a cancelled job's write committed once the row was free."""
    scenario, api = running
    fake.script.clear()  # a stopped run leaves its later turns unasked
    document = api.post("/v1/documents", {"title": "t", "content": "before"}).body
    write = {"id": document["id"], "title": "t", "content": "by the agent"}
    fake.then(Turn(tool_calls=[("documents.write", write)]), Turn(text="done"))
    body = {"name": "w", "provider": "openai", "model": "fake", "tools": ["documents.write"]}
    agent_id = api.post("/v1/agents", body).body["id"]
    job_body = {"agent_id": agent_id, "input": {"text": "write"}}
    if stop == "timeout":
        job_body["timeout_s"] = 3
    with scenario.stack.logs_on_failure(), psycopg.connect(scenario.db.url) as holder:
        holder.execute("SELECT 1 FROM documents WHERE id = %s FOR UPDATE", (document["id"],))
        job_id = api.post("/v1/jobs", job_body).body["id"]
        scenario.stack.within(
            20,
            lambda: "job.tool_call" in [t for _, t in api.event_types(job_id)],
            "the tool never started",
        )
        asked_at = time.monotonic()
        if stop == "cancel":
            assert api.post(f"/v1/jobs/{job_id}/cancel").status == 200
        job = api.wait_terminal(job_id, timeout=20)
        assert job["status"] == {"cancel": "cancelled", "timeout": "timed_out"}[stop], job
        assert time.monotonic() - asked_at < 5.0
        holder.rollback()  # the row is free again
    assert api.get(f"/v1/documents/{document['id']}").body["content"] == "before"
    assert [t for _, t in api.event_types(job_id)][-1] == f"job.{job['status']}"


def job_events(api: Api, job_id: str, event_type: str) -> list[dict[str, Any]]:
    items = api.get(f"/v1/jobs/{job_id}/events?limit=1000").body["items"]
    return [item["data"] for item in items if item["type"] == event_type]


def test_a_tool_append_past_the_workers_event_bound_is_refused_to_the_model(running, fake):
    """The worker gives its tools EVENT_MAX_DATA_BYTES: an agent appends no event a client
    of this deployment could not. The refusal is the tool's result, which the model hears
    (it may append less); the job goes on."""
    scenario, api = running
    fake.script.clear()  # a stopped run leaves its later turns unasked
    big = {"type": "note", "data": {"blob": "x" * WORKER_EVENT_DATA_BYTES}}
    append = {"stream": "agent-notes", "events": [{"type": "note", "data": {}}, big]}
    fake.then(Turn(tool_calls=[("events.append", append)]), Turn(text="could not append"))
    body = {"name": "n", "provider": "openai", "model": "fake", "tools": ["events.append"]}
    agent_id = api.post("/v1/agents", body).body["id"]
    with scenario.stack.logs_on_failure():
        job_id = api.submit(agent_id, "append").body["id"]
        job = api.wait_terminal(job_id, timeout=30)
        assert job["status"] == "succeeded", job
        assert job["output"]["text"] == "could not append"
        refusal = f"events.1.data: must be at most {WORKER_EVENT_DATA_BYTES} bytes as JSON"
        [result] = job_events(api, job_id, "job.tool_result")
        assert result["ok"] is False and refusal in result["result"], result
        told = fake.requests[-1]["messages"][-1]
        assert told["role"] == "tool" and refusal in told["content"], told
        # Neither event of the call was stored: an append is all or nothing.
        assert api.get("/v1/streams/agent-notes/events").body["items"] == []


def test_a_worker_reads_the_conversation_bound_under_its_old_name(running, fake):
    """LLM_MAX_ANSWER_BYTES, the bound's name before LLM_MAX_CONVERSATION_BYTES, still
    sets it, and the worker says once, at startup, that it is deprecated."""
    scenario, api = running
    fake.script.clear()
    fake.then(Turn(text="z" * WORKER_CONVERSATION_BYTES, chunk_size=1000))
    with scenario.stack.logs_on_failure():
        job_id = api.submit(create_agent(api), "long").body["id"]
        job = api.wait_terminal(job_id, timeout=30)
        assert job["status"] == "failed", job
        assert job["error"]["type"] == "permanent" and job["attempt"] == 1, job
        assert f"passed {WORKER_CONVERSATION_BYTES} bytes" in job["error"]["message"], job
        warned = ("settings.renamed_variable", "LLM_MAX_ANSWER_BYTES", "LLM_MAX_CONVERSATION_BYTES")
        assert scenario.stack.log_count("worker", *warned) == 1
