"""Agents on an OpenAI-compatible provider, run in-process against a real fake server.

The watch thread is told to stay away from the database (long poll intervals): these tests
share one connection, and only the runner thread may use it.
"""

import gzip
import json
import uuid

import pytest
from sqlalchemy import text

from services import job_execution
from services.agent_runner import AgentRunner
from services.agent_tools import JobScope, ToolBox
from services.chat_runner import ChatRunner
from services.documents import Limits
from services.job_policy import JobPolicy
from services.llm import ProviderConfig, Providers
from tests.fake_openai import FakeOpenAI, Turn

API_KEY = "sk-test-do-not-leak-4242"
POLICY = JobPolicy(lease_s=3600, cancel_poll_s=3600, retry_base_s=0.01)


@pytest.fixture
def fake():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def runner(fake, session_factory):
    providers = Providers({"openai": ProviderConfig(fake.base_url, API_KEY, 10.0)})
    return AgentRunner(ChatRunner(providers, ToolBox(session_factory)))


@pytest.fixture
def run(runner, session_factory):
    def run(job_id):
        return job_execution.execute(
            session_factory, uuid.UUID(job_id), policy=POLICY, runner=runner
        )

    return run


def agent(client, **fields):
    return client.create_agent(
        provider="openai", model="fake-model", instructions="Be brief.", **fields
    )


def events(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/events?limit=1000").json["items"]


def retry_scheduled(client, run, job_id):
    """Run the job's attempt, which must fail as transient and schedule a retry: the data
    of its `job.retry_scheduled`."""
    assert run(job_id) == "queued"
    (scheduled,) = [e["data"] for e in events(client, job_id) if e["type"] == "job.retry_scheduled"]
    assert scheduled["error"]["type"] == "transient"
    return scheduled


def failed_at_once(client, run, job_id):
    """Run the job's attempt, which must fail it as permanent, its first and last: the
    error's message."""
    assert run(job_id) == "failed"
    failed = client.get(f"/v1/jobs/{job_id}").json
    assert failed["error"]["type"] == "permanent" and failed["attempt"] == 1
    return failed["error"]["message"]


def test_plain_answer_streams_coalesced_deltas(alice, fake, run):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    fake.then(Turn(text=text, chunk_size=4))
    job = alice.submit(agent(alice)["id"], text="Tell me about foxes")
    assert run(job["id"]) == "succeeded"
    done = alice.get(f"/v1/jobs/{job['id']}").json
    assert done["output"]["text"] == text
    assert done["output"]["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
    }
    stream = events(alice, job["id"])
    deltas = [e["data"] for e in stream if e["type"] == "job.output.delta"]
    assert "".join(d["text"] for d in deltas) == text
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    # Coalesced: far fewer events than the 225 chunks the server sent.
    assert 1 <= len(deltas) <= 5
    types = [e["type"] for e in stream]
    assert types[:3] == ["job.queued", "job.started", "job.step.started"]
    assert types[-2:] == ["job.step.finished", "job.succeeded"]
    request = fake.requests[0]
    assert request["model"] == "fake-model" and request["stream"] is True
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about foxes"},
    ]
    assert request["_authorization"] == f"Bearer {API_KEY}"


def test_tool_loop_reads_and_writes_documents(alice, fake, run):
    source = alice.post(
        "/v1/documents", json={"title": "Notes", "content": "Conveyor runs agents."}
    ).json
    fake.then(
        Turn(tool_calls=[("documents.read", {"id": source["id"]})]),
        Turn(
            tool_calls=[
                ("documents.write", {"title": "Summary", "content": "It runs agents."}),
                (
                    "events.append",
                    {
                        "stream": "summaries",
                        "events": [{"type": "summary.written", "data": {"of": source["id"]}}],
                    },
                ),
            ]
        ),
        Turn(text="Done: wrote a summary."),
    )
    job = alice.submit(
        agent(alice, tools=["documents.read", "documents.write", "events.append"])["id"],
        text="Summarize my notes",
    )
    assert run(job["id"]) == "succeeded"
    output = alice.get(f"/v1/jobs/{job['id']}").json["output"]
    assert output["text"] == "Done: wrote a summary." and output["steps"] == 3

    stream = events(alice, job["id"])
    calls = [e["data"] for e in stream if e["type"] == "job.tool_call"]
    results = [e["data"] for e in stream if e["type"] == "job.tool_result"]
    assert [c["name"] for c in calls] == ["documents.read", "documents.write", "events.append"]
    assert all(r["ok"] for r in results)
    assert "Conveyor runs agents." in results[0]["result"]
    written = json.loads(results[1]["result"])
    assert alice.get(f"/v1/documents/{written['id']}").json["content"] == "It runs agents."
    # The document's event says which job wrote it: the job's correlation id.
    correlation_id = stream[0]["metadata"]["correlation_id"]
    [created] = alice.get(f"/v1/streams/document-{written['id']}/events").json["items"]
    assert created["metadata"] == {"correlation_id": correlation_id}
    assert [e["type"] for e in alice.get("/v1/streams/summaries/events").json["items"]] == [
        "summary.written"
    ]
    # The tool results went back to the model, paired with their calls.
    second = fake.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "documents.read"
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == calls[0]["call_id"]
    assert [t["function"]["name"] for t in fake.requests[0]["tools"]] == [
        "documents.read",
        "documents.write",
        "events.append",
    ]


def test_tools_act_with_the_owners_rights_only(alice, bob, fake, run):
    secret = bob.post("/v1/documents", json={"title": "Bob's", "content": "secret"}).json
    fake.then(
        Turn(tool_calls=[("documents.read", {"id": secret["id"]})]),
        Turn(
            tool_calls=[
                (
                    "events.append",
                    {"stream": "job-forged", "events": [{"type": "job.succeeded", "data": {}}]},
                )
            ]
        ),
        Turn(text="could not"),
    )
    job = alice.submit(agent(alice, tools=["documents.read", "events.append"])["id"])
    assert run(job["id"]) == "succeeded"
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert [r["ok"] for r in results] == [False, False]
    assert "no document with this id" in results[0]["result"]
    assert "secret" not in results[0]["result"]
    assert "written by the server only" in results[1]["result"]


def test_an_event_id_twice_in_one_tool_call_is_refused_to_the_model(alice, fake, run):
    event = {"type": "note", "data": {}, "event_id": str(uuid.uuid4())}
    fake.then(
        Turn(tool_calls=[("events.append", {"stream": "notes", "events": [event, event]})]),
        Turn(text="noted"),
    )
    job = alice.submit(agent(alice, tools=["events.append"])["id"])
    assert run(job["id"]) == "succeeded"
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert [r["ok"] for r in results] == [False]
    assert "events.1.event_id: repeats an earlier event's id" in results[0]["result"]
    assert alice.get("/v1/streams/notes/events").json["items"] == []


def test_an_event_larger_than_the_api_takes_is_refused_to_the_model(alice, fake, run, app):
    """The limit on an event's data (EVENT_MAX_DATA_BYTES) was checked by the HTTP route
    only: an agent's `events.append` stored events a client could not append."""
    limit = app.extensions["conveyor"].settings.event_max_data_bytes
    big = {"type": "note", "data": {"blob": "x" * limit}}
    append = {"stream": "notes", "events": [{"type": "note", "data": {}}, big]}
    fake.then(Turn(tool_calls=[("events.append", append)]), Turn(text="done"))
    job = alice.submit(agent(alice, tools=["events.append"])["id"])
    assert run(job["id"]) == "succeeded"
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert [r["ok"] for r in results] == [False]
    assert f"events.1.data: must be at most {limit} bytes as JSON" in results[0]["result"]
    assert alice.get("/v1/streams/notes/events").json["items"] == []
    refused = alice.post("/v1/streams/notes/events", json={"events": append["events"]})
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json["errors"]] == ["events.1.data"]


def test_the_tools_take_the_deployments_event_limit(alice, fake, session_factory):
    """A ToolBox holds its tools to the event limit it is given, not the default (that a
    worker gives it EVENT_MAX_DATA_BYTES: tests/e2e/test_agent_runs.py)."""
    providers = Providers({"openai": ProviderConfig(fake.base_url, API_KEY, 10.0)})
    tools = ToolBox(session_factory, event_max_data_bytes=2048)
    runner = AgentRunner(ChatRunner(providers, tools))
    append = {"stream": "small", "events": [{"type": "note", "data": {"blob": "x" * 2048}}]}
    fake.then(Turn(tool_calls=[("events.append", append)]), Turn(text="done"))
    job = alice.submit(agent(alice, tools=["events.append"])["id"])
    job_execution.execute(session_factory, uuid.UUID(job["id"]), policy=POLICY, runner=runner)
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert "events.0.data: must be at most 2048 bytes as JSON" in results[0]["result"]
    assert alice.get("/v1/streams/small/events").json["items"] == []


def test_versions_past_the_columns_are_refused_to_the_model(alice, fake, run):
    document = alice.post("/v1/documents", json={"title": "t", "content": "c"}).json
    append = {"stream": "notes", "events": [{"type": "note", "data": {}}]}
    fake.then(
        Turn(tool_calls=[("documents.read", {"id": document["id"], "version": 2**31})]),
        Turn(tool_calls=[("events.append", {**append, "expected_version": 2**31})]),
        Turn(text="done"),
    )
    job = alice.submit(agent(alice, tools=["documents.read", "events.append"])["id"])
    assert run(job["id"]) == "succeeded"  # the job goes on; the model hears why
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert [r["ok"] for r in results] == [False, False]
    assert "version" in results[0]["result"] and "expected_version" in results[1]["result"]
    assert alice.get("/v1/streams/notes/events").json["items"] == []


def test_malformed_tool_calls_become_errors_for_the_model(alice, fake, run):
    fake.then(
        Turn(tool_calls=[("documents.read", "{not json")]),
        Turn(tool_calls=[("documents.read", {"id": "x", "extra": 1})]),
        Turn(tool_calls=[("shell.exec", {"cmd": "rm -rf /"})]),
        Turn(text="gave up"),
    )
    job = alice.submit(agent(alice, tools=["documents.read"])["id"])
    assert run(job["id"]) == "succeeded"
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert [r["ok"] for r in results] == [False, False, False]
    assert "invalid arguments" in results[0]["result"]
    assert "extra" in results[1]["result"] and "id" in results[1]["result"]
    assert "no tool named" in results[2]["result"]


def test_stops_at_max_steps(alice, fake, run):
    fake.then(*[Turn(tool_calls=[("documents.search", {"query": "x"})]) for _ in range(3)])
    job = alice.submit(agent(alice, tools=["documents.search"], max_steps=2)["id"])
    assert run(job["id"]) == "succeeded"
    output = alice.get(f"/v1/jobs/{job['id']}").json["output"]
    assert output["stopped"] == "max_steps" and len(fake.requests) == 2
    assert output["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("reason", ["stop", "length", "content_filter"])
def test_the_output_says_why_the_model_stopped(alice, fake, run, reason):
    """An answer cut at max_tokens ("length") looked like a whole one: only the
    `job.step.finished` events said why the model stopped."""
    fake.then(Turn(text="an answer", finish_reason=reason))
    job = alice.submit(agent(alice)["id"])
    assert run(job["id"]) == "succeeded"
    output = alice.get(f"/v1/jobs/{job['id']}").json["output"]
    assert output["text"] == "an answer" and output["finish_reason"] == reason


@pytest.mark.parametrize(
    ("retry_after", "at_least_s"),
    [("nan", 0), ("inf", 0), ("²", 0), ("Fri, 31 Dec 2100 23:59:59 GMT", 3600)],
)
def test_an_odd_retry_after_still_schedules_a_retry(alice, fake, run, retry_after, at_least_s):
    """A NaN once left the job `running` with no outcome (it reached a timedelta), and a
    date was ignored. What cannot be read is ignored; at most an hour is waited."""
    fake.then(Turn(status=429, headers={"Retry-After": retry_after}))
    job = alice.submit(agent(alice)["id"])
    scheduled = retry_scheduled(alice, run, job["id"])
    assert at_least_s <= scheduled["retry_in_s"] <= 3600


@pytest.mark.parametrize(
    ("raw", "raw_type", "said"),
    [
        (b"<html>maintenance</html>", "text/html", "nothing in it"),
        (
            b'{"id": "x", "object": "chat.completion", "choices": []}',
            "application/json",
            "nothing in it",
        ),
        (b"data: {not json\n\n", "text/event-stream", "not JSON"),
        (
            b'data: {"id": "x", "object": "chat.completion.chunk", "choices": "oops"}\n\n',
            "text/event-stream",
            "does not allow",
        ),
        (
            b'data: {"error": {"message": "key sk-secret refused"}}\n\n',
            "text/event-stream",
            "in the middle of its answer",
        ),
        (
            b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0,'
            b' "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": 5}}]}}]}\n\n',
            "text/event-stream",
            "does not allow",
        ),
        (
            b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [],'
            b' "usage": {"prompt_tokens": "5"}}\n\n',
            "text/event-stream",
            "does not allow",
        ),
        (
            b'data: {"id": "x", "object": "chat.completion.chunk", "choices": [],'
            b' "usage": {"prompt_tokens": 1180591620717411303424}}\n\n',
            "text/event-stream",
            "does not allow",
        ),
    ],
    ids=[
        "html",
        "not a stream",
        "not json",
        "choices a string",
        "error event",
        "name a number",
        "usage a string",
        "usage past 64 bits",
    ],
)
def test_a_broken_answer_is_the_providers_fault_and_retried(alice, fake, run, raw, raw_type, said):
    """Each ended `succeeded` with no text, or `failed` as our own bug (`internal`)."""
    fake.then(Turn(raw=raw, raw_type=raw_type))
    job = alice.submit(agent(alice)["id"])
    scheduled = retry_scheduled(alice, run, job["id"])
    assert said in scheduled["error"]["message"]
    assert "sk-secret" not in str(events(alice, job["id"]))


@pytest.mark.parametrize(
    "cut",
    [
        Turn(text="The answer is fourt", ends_early=True),
        Turn(tool_calls=[("documents.search", {"query": "cut short"})], ends_early=True),
    ],
    ids=["text", "tool calls"],
)
def test_an_answer_cut_before_its_finish_reason_is_retried(alice, fake, run, cut):
    """A connection closed early ended the job `succeeded` with part of an answer, or ran
    tool calls whose last arguments may have been cut."""
    fake.then(cut)
    job = alice.submit(agent(alice, tools=["documents.search"])["id"])
    scheduled = retry_scheduled(alice, run, job["id"])
    assert "before it was finished" in scheduled["error"]["message"]
    assert not [e for e in events(alice, job["id"]) if e["type"] == "job.tool_call"]


@pytest.mark.parametrize("status", [429, 409], ids=["rate limited", "conflict"])
def test_rate_limit_is_retried_after_retry_after(alice, fake, run, session_factory, status):
    """OpenAI answers 409 to a request that clashed with another one and succeeds when
    sent again; it failed the job at once, as a request of ours the provider refused."""
    fake.then(Turn(status=status, headers={"Retry-After": "7"}))
    job = alice.submit(agent(alice)["id"])
    assert retry_scheduled(alice, run, job["id"])["retry_in_s"] >= 7
    with session_factory.begin() as session:  # the backoff has passed
        from models import Job

        session.execute(Job.__table__.update().values(run_after=None))
    assert run(job["id"]) == "succeeded"
    assert alice.get(f"/v1/jobs/{job['id']}").json["attempt"] == 2


def test_server_errors_are_transient_then_fail_when_attempts_run_out(alice, fake, run):
    fake.then(Turn(status=500))
    job = alice.submit(agent(alice)["id"], max_attempts=1)
    assert run(job["id"]) == "failed"
    error = alice.get(f"/v1/jobs/{job['id']}").json["error"]
    assert error["type"] == "transient" and "500" in error["message"]


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_fail_at_once_without_leaking_the_key(alice, fake, run, status):
    fake.then(Turn(status=status))
    job = alice.submit(agent(alice)["id"])
    assert run(job["id"]) == "failed"
    failed = alice.get(f"/v1/jobs/{job['id']}")
    assert failed.json["error"]["type"] == "permanent"
    assert str(status) in failed.json["error"]["message"]
    assert failed.json["attempt"] == 1
    assert API_KEY not in failed.get_data(as_text=True)
    assert API_KEY not in json.dumps(events(alice, job["id"]))


def test_job_runs_the_agent_version_it_was_submitted_with(alice, fake, run):
    created = agent(alice)
    job = alice.submit(created["id"])
    alice.patch(
        f"/v1/agents/{created['id']}", json={"instructions": "Be verbose.", "model": "other"}
    )
    assert run(job["id"]) == "succeeded"
    request = fake.requests[0]
    assert request["model"] == "fake-model"
    assert request["messages"][0]["content"] == "Be brief."


def test_documents_in_the_input_are_given_as_context(alice, fake, run):
    doc = alice.post("/v1/documents", json={"title": "Spec", "content": "Use UUIDv7."}).json
    body = {
        "agent_id": agent(alice)["id"],
        "input": {"text": "What ids?", "documents": [doc["id"]]},
    }
    job = alice.post("/v1/jobs", json=body).json
    assert run(job["id"]) == "succeeded"
    context = fake.requests[0]["messages"][1]
    assert context["role"] == "system" and "Use UUIDv7." in context["content"]


@pytest.fixture
def small_answers_run(fake, session_factory):
    """A provider whose conversations are held to 64 KiB, the least
    LLM_MAX_CONVERSATION_BYTES takes."""
    config = ProviderConfig(fake.base_url, API_KEY, 10.0, max_conversation_bytes=64 * 1024)
    runner = AgentRunner(ChatRunner(Providers({"openai": config}), ToolBox(session_factory)))

    def run(job_id):
        return job_execution.execute(
            session_factory, uuid.UUID(job_id), policy=POLICY, runner=runner
        )

    return run


def test_an_answer_past_its_bound_fails_the_job_at_once(alice, fake, small_answers_run):
    """Nothing bounded an answer: the whole stream was read, however long."""
    fake.then(Turn(text="x" * 100_000, chunk_size=500))
    job = alice.submit(agent(alice)["id"])
    message = failed_at_once(alice, small_answers_run, job["id"])
    assert "65536 bytes" in message


def test_an_error_answer_past_its_bound_fails_the_job_too(alice, fake, small_answers_run):
    fake.then(Turn(status=500, raw=b'{"error": "' + b"x" * 100_000 + b'"}', raw_type="text/json"))
    job = alice.submit(agent(alice)["id"])
    assert small_answers_run(job["id"]) == "failed"
    assert "65536 bytes" in alice.get(f"/v1/jobs/{job['id']}").json["error"]["message"]


def _chunk(delta: dict, finish_reason: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n"


def test_a_compressed_answer_is_read(alice, fake, run):
    stream = _chunk({"content": "zipped"}) + _chunk({}, "stop") + b"data: [DONE]\n\n"
    fake.then(Turn(raw=gzip.compress(stream), headers={"Content-Encoding": "gzip"}))
    job = alice.submit(agent(alice)["id"])
    assert run(job["id"]) == "succeeded"
    assert alice.get(f"/v1/jobs/{job['id']}").json["output"]["text"] == "zipped"


def test_a_compressed_answer_past_its_bound_fails_the_job(alice, fake, small_answers_run):
    """Counted on the wire, 45 KB of gzip holding 16 MB passed a bound of 64 KiB."""
    stream = _chunk({"content": "x" * 1000}) * 15_000 + _chunk({}, "stop")
    body = gzip.compress(stream)
    assert len(body) < 64 * 1024
    fake.then(Turn(raw=body, headers={"Content-Encoding": "gzip"}))
    job = alice.submit(agent(alice)["id"])
    message = failed_at_once(alice, small_answers_run, job["id"])
    assert "65536 bytes" in message


@pytest.mark.parametrize(
    ("encoding", "body", "said"),
    [("br", b"\x0b\x00\x80", "not offered"), ("gzip", b"not gzip", "does not inflate")],
)
def test_an_answer_that_does_not_inflate_is_broken_and_retried(
    alice, fake, run, encoding, body, said
):
    """Both were retried as a provider that "could not be reached"."""
    fake.then(Turn(raw=body, headers={"Content-Encoding": encoding}))
    job = alice.submit(agent(alice)["id"])
    scheduled = retry_scheduled(alice, run, job["id"])
    assert said in scheduled["error"]["message"]


def test_a_line_without_end_is_a_broken_answer_and_retried(alice, fake, run):
    """One endless line grew a pool process past 1.7 GB before the job's timeout."""
    fake.then(Turn(raw=b"data: " + b"x" * (1024 * 1024 + 1)))
    job = alice.submit(agent(alice)["id"])
    scheduled = retry_scheduled(alice, run, job["id"])
    assert "longer than 1048576 bytes" in scheduled["error"]["message"]


def test_fast_big_chunks_are_coalesced_too(alice, fake, run):
    """Each chunk of 400 characters or more used to be an event (and a commit) of its own."""
    text = "y" * 500 * 200
    fake.then(Turn(text=text, chunk_size=500))
    job = alice.submit(agent(alice)["id"])
    assert run(job["id"]) == "succeeded"
    deltas = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.output.delta"]
    assert "".join(d["text"] for d in deltas) == text
    assert len(deltas) < 50  # 200 chunks; at least 16 KiB or 50 ms apart


def test_tool_calls_past_the_cap_are_answered_not_run(alice, fake, run):
    from services.chat_runner import MAX_TOOL_CALLS_PER_STEP

    calls = [("documents.search", {"query": f"q{i}"}) for i in range(MAX_TOOL_CALLS_PER_STEP + 3)]
    fake.then(Turn(tool_calls=calls), Turn(text="done"))
    job = alice.submit(agent(alice, tools=["documents.search"])["id"])
    assert run(job["id"]) == "succeeded"
    stream = events(alice, job["id"])
    results = [e for e in stream if e["type"] == "job.tool_result"]
    assert len(results) == MAX_TOOL_CALLS_PER_STEP
    finished = [e["data"] for e in stream if e["type"] == "job.step.finished"]
    assert finished[0]["tool_calls_not_run"] == 3 and "tool_calls_not_run" not in finished[1]
    answers = [m for m in fake.requests[1]["messages"] if m["role"] == "tool"]
    assert len(answers) == MAX_TOOL_CALLS_PER_STEP + 3
    assert [a["content"].startswith("not run") for a in answers].count(True) == 3


def test_an_answer_with_more_tool_calls_than_taken_fails_the_job(alice, fake, run):
    """Nothing bounded their number but the answer's bytes: over 100,000 small calls fit in
    32 MiB, each a message of the conversation and an answer the provider wants."""
    calls = [("documents.search", {"query": "q"})] * 65
    fake.then(Turn(tool_calls=calls), Turn(text="done"))
    job = alice.submit(agent(alice, tools=["documents.search"])["id"])
    message = failed_at_once(alice, run, job["id"])
    assert "more than 64 tool calls" in message
    assert not [e for e in events(alice, job["id"]) if e["type"] == "job.tool_call"]
    assert len(fake.requests) == 1


def test_a_conversation_past_the_answer_bound_fails_the_job(alice, fake, small_answers_run):
    """Each answer was bounded, not the turns together: every request carries all of
    them, and steps of 25 KB each grew it past the bound of 64 KiB."""
    step = Turn(tool_calls=[("documents.search", {"query": "q" * 25_000})])
    fake.then(step, step, step, Turn(text="done"))
    job = alice.submit(agent(alice, tools=["documents.search"])["id"])
    message = failed_at_once(alice, small_answers_run, job["id"])
    assert "conversation" in message
    assert "65536 bytes" in message
    assert len(fake.requests) == 3


def test_two_tool_calls_with_one_id_get_two_ids(alice, fake, run):
    """Both results answered the same id, which the provider refuses."""
    calls = [("documents.search", {"query": "a"}), ("documents.search", {"query": "b"})]
    fake.then(Turn(tool_calls=calls, tool_call_ids={0: "same", 1: "same"}), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.search"])["id"])
    assert run(job["id"]) == "succeeded"
    second = fake.requests[1]["messages"]
    (assistant,) = [m for m in second if m["role"] == "assistant"]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert len(set(ids)) == 2 and ids[0] == "same"
    assert [m["tool_call_id"] for m in second if m["role"] == "tool"] == ids


def test_a_search_postgres_cannot_parse_is_refused_to_the_model(alice, fake, run):
    """It failed the job as `internal`: only ServiceErrors were refusals."""
    fake.then(Turn(tool_calls=[("documents.search", {"query": "-" * 40})]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.search"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is False and "too many operators" in result["result"]


def test_what_cannot_be_stored_in_a_models_text_is_replaced_not_a_failure(alice, fake, run):
    """A NUL or a lone surrogate failed the job as `internal` when its event was written."""
    fake.then(Turn(text="nul\x00 and half an emoji \ud83d."))
    job = alice.submit(agent(alice)["id"])
    assert run(job["id"]) == "succeeded"
    text = alice.get(f"/v1/jobs/{job['id']}").json["output"]["text"]
    assert text == "nul\ufffd and half an emoji \ufffd."


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ('{"title": "t", "content": "a\\u0000b"}', "NUL"),
        (
            '{"title": "t", "content": "c", "metadata": {"n": 123456789012345678901234567890}}',
            "2^63",
        ),
        ('{"title": "t", "content": "c", "metadata": {"n": 1e400}}', "too large"),
    ],
    ids=["nul", "big integer", "infinite number"],
)
def test_tool_arguments_that_cannot_be_stored_are_refused_to_the_model(
    alice, fake, run, arguments, said
):
    """Each failed the job as `internal` (a DataError, or orjson's TypeError)."""
    fake.then(Turn(tool_calls=[("documents.write", arguments)]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is False and said in result["result"]
    assert alice.get("/v1/documents").json["items"] == []


def test_a_tool_the_agent_was_not_given_is_not_run(alice, fake, run):
    """Only the specs sent to the model followed the agent's tools: any tool it named ran."""
    write = ("documents.write", {"title": "sneaky", "content": "x"})
    fake.then(Turn(tool_calls=[write]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.read"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is False and "no tool named" in result["result"]
    assert alice.get("/v1/documents").json["items"] == []


def test_a_write_with_the_version_it_read_does_not_overwrite_a_change_made_meanwhile(
    alice, fake, run
):
    document = alice.post("/v1/documents", json={"title": "t", "content": "v1"}).json
    alice.patch(f"/v1/documents/{document['id']}", json={"content": "client's"})
    stale = {"id": document["id"], "version": 1, "title": "t", "content": "agent's"}
    fake.then(Turn(tool_calls=[("documents.write", stale)]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is False and "version 2" in result["result"]
    assert alice.get(f"/v1/documents/{document['id']}").json["content"] == "client's"


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"content_type": "notes"}, "content_type"),
        ({"content_type": "text/plain\r\nX-Injected: 1"}, "content_type"),
        ({"title": "Report\n## Another document"}, "title"),
        # The arguments are level 1, as a request body is: metadata of 32 levels is 33.
        ({"metadata": _nested(32)}, "deeper than 32"),
        ({"metadata": {"k" * 1025: 1}}, "key longer than 1024"),
    ],
    ids=[
        "content type",
        "content type with a header",
        "title of two lines",
        "deep metadata",
        "long key",
    ],
)
def test_an_agent_writes_no_document_the_api_would_refuse(alice, fake, run, fields, said):
    """The tool took any content type and metadata of any shape that PostgreSQL keeps: a
    client that read such a document and PUT it back got a 422 for fields it never set."""
    arguments = {"title": "t", "content": "c", **fields}
    assert alice.post("/v1/documents", json=arguments).status_code == 422
    fake.then(Turn(tool_calls=[("documents.write", arguments)]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is False and said in result["result"], result
    assert alice.get("/v1/documents").json["items"] == []


def test_an_agent_writes_what_the_api_takes_at_its_limits(alice, fake, run):
    arguments = {
        "title": "t",
        "content": "c",
        "content_type": "text/markdown; charset=utf-8",
        "metadata": {"k" * 1024: _nested(30)},  # 32 levels in all
    }
    fake.then(Turn(tool_calls=[("documents.write", arguments)]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is True, result
    written = alice.get(f"/v1/documents/{json.loads(result['result'])['id']}")
    body = {k: written.json[k] for k in arguments}
    put = alice.client.put(written.request.path, json=body, headers=alice.headers)
    assert put.status_code == 200, put.json


def _retry_now(session_factory) -> None:
    from models import Job

    with session_factory.begin() as session:  # the backoff has passed
        session.execute(Job.__table__.update().values(run_after=None))


def _written_ids(client, job_id) -> list[str]:
    return [
        json.loads(e["data"]["result"])["id"]
        for e in events(client, job_id)
        if e["type"] == "job.tool_result" and e["data"]["ok"]
    ]


def test_a_retried_attempt_does_not_create_its_documents_again(alice, fake, run, session_factory):
    """Attempt 1 created a document, then the provider failed: attempt 2 ran the model from
    the start and created a second one, as every retry would. The k-th document a job's
    attempt creates is the one its earlier attempts' k-th create made."""
    report = ("documents.write", {"title": "Report", "content": "draft"})
    notes = ("documents.write", {"title": "Notes", "content": "n"})
    fake.then(Turn(tool_calls=[report, notes]), Turn(status=503))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "queued"
    first = _written_ids(alice, job["id"])
    assert len(first) == 2

    final = ("documents.write", {"title": "Report", "content": "final"})
    fake.then(Turn(tool_calls=[final, notes]), Turn(text="done"))
    _retry_now(session_factory)
    assert run(job["id"]) == "succeeded"
    assert _written_ids(alice, job["id"]) == first * 2
    listed = alice.get("/v1/documents").json["items"]
    assert sorted(d["id"] for d in listed) == sorted(first)
    report_now = alice.get(f"/v1/documents/{first[0]}").json
    assert (report_now["content"], report_now["version"]) == ("final", 2)
    # Written again just as it was: nothing changes, not even the version.
    assert alice.get(f"/v1/documents/{first[1]}").json["version"] == 1


def test_a_retry_creates_anew_a_document_deleted_since(alice, fake, run, session_factory):
    write = ("documents.write", {"title": "Report", "content": "draft"})
    fake.then(Turn(tool_calls=[write]), Turn(status=503))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "queued"
    (first,) = _written_ids(alice, job["id"])
    assert alice.delete(f"/v1/documents/{first}").status_code == 204

    fake.then(Turn(tool_calls=[write]), Turn(text="done"))
    _retry_now(session_factory)
    assert run(job["id"]) == "succeeded"
    (_, second) = _written_ids(alice, job["id"])
    assert second != first
    assert [d["id"] for d in alice.get("/v1/documents").json["items"]] == [second]


def test_a_retry_writing_true_where_1_was_writes_the_document_again(
    alice, fake, run, session_factory
):
    """The retried create compared the document with Python's `==`, where `True == 1`: a
    retry that wrote `true` found the document "as it was", and kept the earlier `1`."""
    write = {"title": "Report", "content": "c", "metadata": {"flag": 1}}
    fake.then(Turn(tool_calls=[("documents.write", write)]), Turn(status=503))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "queued"
    (written,) = _written_ids(alice, job["id"])

    again = {**write, "metadata": {"flag": True}}
    fake.then(Turn(tool_calls=[("documents.write", again)]), Turn(text="done"))
    _retry_now(session_factory)
    assert run(job["id"]) == "succeeded"
    document = alice.get(f"/v1/documents/{written}").json
    assert (document["metadata"], document["version"]) == ({"flag": True}, 2)


def test_two_jobs_create_their_own_documents(alice, fake, run):
    write = ("documents.write", {"title": "Report", "content": "draft"})
    agent_id = agent(alice, tools=["documents.write"])["id"]
    for _ in range(2):
        fake.then(Turn(tool_calls=[write]), Turn(text="done"))
        assert run(alice.submit(agent_id)["id"]) == "succeeded"
    assert len(alice.get("/v1/documents").json["items"]) == 2


def test_an_agent_writes_to_the_deployments_document_limits(alice, fake, session_factory):
    """The tool held titles to 500 characters and metadata to 16 KiB whatever
    DOCUMENT_MAX_TITLE_LENGTH and DOCUMENT_MAX_METADATA_BYTES said; the API follows them."""
    limits = Limits(max_title_length=2000, max_metadata_bytes=64 * 1024)
    providers = Providers({"openai": ProviderConfig(fake.base_url, API_KEY, 10.0)})
    runner = AgentRunner(ChatRunner(providers, ToolBox(session_factory, limits)))
    big = {"title": "t" * 1500, "content": "c", "metadata": {"k": "v" * 40_000}}
    over = {"title": "t" * 2001, "content": "c"}
    fake.then(Turn(tool_calls=[("documents.write", big), ("documents.write", over)]))
    fake.then(Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert (
        job_execution.execute(session_factory, uuid.UUID(job["id"]), policy=POLICY, runner=runner)
        == "succeeded"
    )
    results = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert [r["ok"] for r in results] == [True, False], results
    assert "at most 2000 characters" in results[1]["result"]


def test_a_write_with_a_version_but_no_id_is_refused_to_the_model(alice, fake, run):
    """`version` says "only if it is still at this version"; without `id` it was ignored and
    a new document made, a copy of the one the model meant to change."""
    meant = {"version": 1, "title": "t", "content": "changed"}
    fake.then(Turn(tool_calls=[("documents.write", meant)]), Turn(text="ok"))
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    assert run(job["id"]) == "succeeded"
    (result,) = [e["data"] for e in events(alice, job["id"]) if e["type"] == "job.tool_result"]
    assert result["ok"] is False and "version needs the id" in result["result"], result
    assert alice.get("/v1/documents").json["items"] == []


def test_a_tool_call_of_an_attempt_that_lost_its_job_writes_nothing(alice, session_factory):
    """A call made after the attempt's lease ran out and the job was taken again landed
    beside the next attempt's writes; now the job's row tells, and is held until commit."""
    job = alice.submit(agent(alice, tools=["documents.write"])["id"])
    with session_factory.begin() as session:
        owner_id = session.execute(
            text(
                "UPDATE jobs SET status = 'running', attempt = 2 WHERE id = :id RETURNING owner_id"
            ),
            {"id": job["id"]},
        ).scalar_one()
    tools = ToolBox(session_factory)

    def write(attempt):
        return tools.execute(
            "documents.write",
            json.dumps({"title": f"by attempt {attempt}", "content": "c"}),
            owner_id=owner_id,
            allowed=["documents.write"],
            job=JobScope(uuid.UUID(job["id"]), attempt),
        )

    stale = write(1)
    assert not stale.ok and "no longer holds" in stale.content
    assert write(2).ok
    titles = [d["title"] for d in alice.get("/v1/documents").json["items"]]
    assert titles == ["by attempt 2"]
