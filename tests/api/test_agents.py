import pytest

from tests.helpers import AuthClient


def test_create_and_read_agent(alice):
    created = alice.create_agent(name="writer", instructions="Be brief.", params={"delay_ms": 5})
    assert created["version"] == 1 and created["provider"] == "echo"
    response = alice.get(f"/v1/agents/{created['id']}")
    assert response.status_code == 200
    assert response.json["instructions"] == "Be brief."
    assert response.headers["ETag"] == '"1"'


def test_list_pages_newest_first(alice):
    ids = [alice.create_agent(name=f"a{i}")["id"] for i in range(5)]
    first = alice.get("/v1/agents?limit=2").json
    assert [a["id"] for a in first["items"]] == ids[::-1][:2]
    second = alice.get(f"/v1/agents?limit=2&cursor={first['next_cursor']}").json
    third = alice.get(f"/v1/agents?limit=2&cursor={second['next_cursor']}").json
    seen = [a["id"] for page in (first, second, third) for a in page["items"]]
    assert seen == ids[::-1]
    assert third["next_cursor"] is None


def test_patch_bumps_version_and_honours_if_match(alice):
    agent = alice.create_agent()
    url = f"/v1/agents/{agent['id']}"
    changed = alice.patch(url, json={"instructions": "new"}, headers={"If-Match": '"1"'})
    assert changed.status_code == 200
    assert changed.json["version"] == 2 and changed.headers["ETag"] == '"2"'
    stale = alice.patch(url, json={"instructions": "lost"}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json["current_version"] == 2
    assert alice.get(url).json["instructions"] == "new"


def test_delete_honours_if_match(alice):
    """It was ignored: a client that last saw version 1 deleted changes it never saw."""
    agent = alice.create_agent()
    url = f"/v1/agents/{agent['id']}"
    alice.patch(url, json={"instructions": "new"})
    stale = alice.delete(url, headers={"If-Match": '"1"'})
    assert stale.status_code == 412 and stale.json["current_version"] == 2
    assert alice.get(url).status_code == 200
    assert alice.delete(url, headers={"If-Match": "not-a-tag"}).status_code == 422
    assert alice.delete(url, headers={"If-None-Match": "*"}).status_code == 412
    assert alice.delete(url, headers={"If-Match": '"1", "2"'}).status_code == 204
    assert alice.get(url).status_code == 404


def test_patch_rejects_empty_and_unknown_fields(alice):
    url = f"/v1/agents/{alice.create_agent()['id']}"
    assert alice.patch(url, json={}).status_code == 422
    assert alice.patch(url, json={"version": 7}).status_code == 422
    assert alice.patch(url, json={"name": None}).status_code == 422
    assert alice.get(url).json["version"] == 1


def test_delete_hides_agent_but_keeps_jobs(alice):
    agent = alice.create_agent()
    job = alice.submit(agent["id"])
    assert alice.delete(f"/v1/agents/{agent['id']}").status_code == 204
    assert alice.get(f"/v1/agents/{agent['id']}").status_code == 404
    assert alice.delete(f"/v1/agents/{agent['id']}").status_code == 404
    assert alice.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert (
        alice.post("/v1/jobs", json={"agent_id": agent["id"], "input": {"text": "x"}}).status_code
        == 422
    )


def test_other_owner_sees_404_and_changes_nothing(alice, bob):
    agent = alice.create_agent()
    url = f"/v1/agents/{agent['id']}"
    assert bob.get(url).status_code == 404
    assert bob.patch(url, json={"name": "stolen"}).status_code == 404
    assert bob.delete(url).status_code == 404
    assert bob.get("/v1/agents").json["items"] == []
    assert alice.get(url).json["name"] == agent["name"]


def test_agent_validation(alice):
    too_many_steps = alice.post(
        "/v1/agents", json={"name": "x", "provider": "echo", "max_steps": 0}
    )
    unknown_tool = alice.post("/v1/agents", json={"name": "x", "provider": "echo", "tools": ["rm"]})
    assert too_many_steps.status_code == 422
    assert unknown_tool.status_code == 422
    assert alice.get("/v1/agents").json["items"] == []


@pytest.mark.parametrize("field", ["max_steps", "timeout_s"])
@pytest.mark.parametrize("value", [True, "8"])
def test_an_agents_counts_must_be_json_integers(alice, field, value):
    created = alice.post("/v1/agents", json={"name": "x", "provider": "echo", field: value})
    assert created.status_code == 422, created.json
    assert [e["field"] for e in created.json["errors"]] == [field]
    assert alice.get("/v1/agents").json["items"] == []
    agent = alice.post("/v1/agents", json={"name": "x", "provider": "echo"}).json
    patched = alice.patch(f"/v1/agents/{agent['id']}", json={field: value})
    assert patched.status_code == 422, patched.json
    assert alice.get(f"/v1/agents/{agent['id']}").json["version"] == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider": "openai"}, "model"),
        ({"provider": "openai", "model": " "}, "model"),
        ({"tools": ["documents.read", "documents.search", "documents.read"]}, "tools"),
    ],
    ids=["no model", "blank model", "a tool twice"],
)
def test_an_agent_no_job_could_run_is_refused_naming_the_field(alice, fields, field):
    """Both were registered: every job of an openai agent without a model failed at its
    run, and a tool listed twice was described twice to the model in every request."""
    created = alice.post("/v1/agents", json={"name": "x", "provider": "echo", **fields})
    assert created.status_code == 422, created.json
    assert [e["field"] for e in created.json["errors"]] == [field]
    if fields.get("model") is None and field == "model":
        assert created.json["errors"][0]["detail"] == "the openai provider needs a model"
    assert alice.get("/v1/agents").json["items"] == []


@pytest.mark.parametrize(
    ("start", "change", "field"),
    [
        ({"provider": "openai", "model": "m"}, {"model": None}, "model"),
        ({}, {"provider": "openai"}, "model"),
        ({}, {"tools": ["events.append", "events.append"]}, "tools"),
    ],
    ids=["model removed", "provider without model", "a tool twice"],
)
def test_a_change_leaving_an_agent_no_job_could_run_is_refused(alice, start, change, field):
    agent = alice.create_agent(**start)
    patched = alice.patch(f"/v1/agents/{agent['id']}", json=change)
    assert patched.status_code == 422, patched.json
    assert [e["field"] for e in patched.json["errors"]] == [field]
    assert alice.get(f"/v1/agents/{agent['id']}").json == agent
    model_added = alice.patch(f"/v1/agents/{agent['id']}", json={**change, "model": "m"})
    assert model_added.status_code == (200 if field == "model" else 422)


def test_an_agents_timeout_is_held_to_the_deployments_job_maximum(app_with, alice, session):
    """`timeout_s` of an agent was bounded by a fixed 3600, not by JOB_MAX_TIMEOUT_S: with
    a maximum of 60, an agent of 3600 gave its jobs an hour, and the document said 3600."""
    app = app_with(job_max_timeout_s=60)
    user = AuthClient(app.test_client(), alice.email, alice.tokens)
    refused = user.post("/v1/agents", json={"name": "a", "provider": "echo", "timeout_s": 61})
    assert refused.status_code == 422
    assert [e["field"] for e in refused.json["errors"]] == ["timeout_s"]
    assert user.get("/v1/agents").json["items"] == []
    agent = user.create_agent(timeout_s=60)
    url = f"/v1/agents/{agent['id']}"
    assert user.patch(url, json={"timeout_s": 61}).status_code == 422
    assert user.get(url).json["version"] == 1
    schema = user.client.get("/openapi.json").json["components"]["schemas"]
    for name in ("AgentIn", "AgentPatch"):
        integer = next(b for b in schema[name]["properties"]["timeout_s"]["anyOf"] if "type" in b)
        assert integer.get("type") == "integer" and integer["maximum"] == 60


def test_an_agent_stored_with_a_longer_timeout_runs_its_jobs_within_the_maximum(
    app_with, alice, session
):
    """An agent stored before the maximum was lowered keeps its value, but its jobs get
    no more than the deployment allows."""
    agent = alice.create_agent(timeout_s=3600)
    user = AuthClient(app_with(job_max_timeout_s=60).test_client(), alice.email, alice.tokens)
    assert user.submit(agent["id"])["timeout_s"] == 60
    assert user.submit(agent["id"], timeout_s=30)["timeout_s"] == 30


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider": "openai", "model": "m", "params": {"temprature": 0.2}}, "params.temprature"),
        (
            {"provider": "openai", "model": "m", "params": {"temperature": "hot"}},
            "params.temperature",
        ),
        (
            {"provider": "openai", "model": "m", "params": {"temperature": 2.5}},
            "params.temperature",
        ),
        ({"provider": "openai", "model": "m", "params": {"top_p": True}}, "params.top_p"),
        ({"provider": "openai", "model": "m", "params": {"max_tokens": 0}}, "params.max_tokens"),
        ({"provider": "openai", "model": "m", "params": {"max_tokens": 1.5}}, "params.max_tokens"),
        ({"provider": "openai", "model": "m", "params": {"seed": "1"}}, "params.seed"),
        ({"provider": "openai", "model": "m", "params": {"stop": ["a"] * 5}}, "params.stop"),
        ({"provider": "openai", "model": "m", "params": {"stop": [1]}}, "params.stop"),
        ({"provider": "echo", "params": {"delay_ms": -1}}, "params.delay_ms"),
        ({"provider": "echo", "params": {"delay_ms": "5"}}, "params.delay_ms"),
    ],
)
def test_params_a_job_could_not_run_with_are_refused(alice, fields, field):
    """An openai agent sends only temperature, top_p, max_tokens, seed and stop to the
    model: any other name (a typo) was stored and ignored without a word, and a value of
    the wrong type or range failed every job at the provider; an echo agent's delay_ms
    out of range failed every job at its run."""
    created = alice.post("/v1/agents", json={"name": "x", **fields})
    assert created.status_code == 422, created.json
    assert [e["field"] for e in created.json["errors"]] == [field]
    assert alice.get("/v1/agents").json["items"] == []
    agent = alice.create_agent(provider=fields["provider"], model=fields.get("model"))
    patched = alice.patch(f"/v1/agents/{agent['id']}", json={"params": fields["params"]})
    assert patched.status_code == 422
    assert [e["field"] for e in patched.json["errors"]] == [field]
    assert alice.get(f"/v1/agents/{agent['id']}").json == agent


def test_params_that_jobs_run_with_are_kept(alice):
    params = {"temperature": 0, "top_p": 0.5, "max_tokens": 100, "seed": -3, "stop": "END"}
    assert alice.create_agent(provider="openai", model="m", params=params)["params"] == params
    listed = {"stop": ["a", "b", "c", "d"], "temperature": 2}
    assert alice.create_agent(provider="openai", model="m", params=listed)["params"] == listed
    echo = {"delay_ms": 1.5, "fail": "x", "transient_failures": 1, "anything": {"else": 1}}
    assert alice.create_agent(params=echo)["params"] == echo


@pytest.mark.parametrize("model", ["gpt-4o\nmini", "gpt\t4", "m\x85", ""])
def test_a_model_name_is_one_line(alice, model):
    """A model's name goes to the provider in every request; one with a line break or a
    control character names no model there, and every job failed at its run."""
    body = {"name": "x", "provider": "openai", "model": model}
    created = alice.post("/v1/agents", json=body)
    assert created.status_code == 422, created.json
    assert [e["field"] for e in created.json["errors"]] == ["model"]
    agent = alice.create_agent(provider="openai", model="m")
    patched = alice.patch(f"/v1/agents/{agent['id']}", json={"model": model})
    assert patched.status_code == 422
    assert alice.get(f"/v1/agents/{agent['id']}").json == agent


def test_a_read_of_an_agent_honours_its_conditions(client, alice):
    """The agent's GET sent an ETag but ignored `If-None-Match` (a 200 with the whole
    body every poll) and `If-Match` (a 200 at another version), which a document's and a
    stream's GET honour."""
    agent = alice.create_agent()
    url = f"/v1/agents/{agent['id']}"
    unchanged = alice.get(url, headers={"If-None-Match": '"1"'})
    assert unchanged.status_code == 304 and unchanged.data == b""
    assert unchanged.headers["ETag"] == '"1"'
    moved_on = alice.get(url, headers={"If-Match": '"7"'})
    assert moved_on.status_code == 412 and moved_on.json["current_version"] == 1
    assert alice.patch(url, json={"instructions": "new"}).status_code == 200
    changed = alice.get(url, headers={"If-None-Match": '"1"'})
    assert changed.status_code == 200 and changed.json["version"] == 2
    spec = client.get("/openapi.json").json["paths"]["/v1/agents/{agent_id}"]["get"]
    assert {"304", "412"} <= spec["responses"].keys()
    assert "ETag" in spec["responses"]["304"]["headers"]


@pytest.mark.parametrize(
    "name",
    ["invoice\u202egpj.exe", "a\u2066b\u2069", "\u200b", "a\ufeffb"],
    ids=["right-to-left override", "isolate", "zero-width space", "zero-width no-break"],
)
def test_a_name_holds_no_invisible_reordering_characters(alice, name):
    """A name is shown in lists: bidirectional overrides and isolates reorder what follows
    them there (an agent "invoice\\u202egpj.exe" reads "invoiceexe.jpg"), and a zero-width
    character made a name that shows as nothing. Both were stored."""
    created = alice.post("/v1/agents", json={"name": name, "provider": "echo"})
    assert created.status_code == 422, created.json
    assert [e["field"] for e in created.json["errors"]] == ["name"]
    key = alice.post("/v1/api-keys", json={"name": name})
    assert key.status_code == 422
    assert alice.get("/v1/agents").json["items"] == []


def test_a_name_may_be_written_in_any_script(alice):
    for name in (
        "\u05e9\u05dc\u05d5\u05dd\u200f",
        "\u0645\u0631\u062d\u0628\u0627",
        "\U0001f468\u200d\U0001f4bb",
        "\u0928\u092e\u0938\u094d\u200d\u0924\u0947",
    ):
        assert alice.create_agent(name=name)["name"] == name
