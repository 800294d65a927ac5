from __future__ import annotations

import uuid

from apiflask import APIBlueprint

from api.auth import current_principal, require_access_token
from api.idempotent import idempotent
from api.openapi import declares
from api.preconditions import check_on_create, conditional_read, version_condition
from api.representations import agent_json, etag
from api.request_context import db
from api.runtime import current_runtime, page_max_bytes
from api.schemas.agents import AgentIn, AgentOut, AgentPatch
from api.schemas.common import PageOut, PageQuery
from api.spec_parts import CREATE_CONDITIONS
from services import agents

bp = APIBlueprint("agents", __name__, url_prefix="/v1/agents", tag="Agents")
bp.before_request(require_access_token)


def _max_timeout_s() -> int:
    """An agent's `timeout_s` becomes its jobs': the deployment's maximum for a job bounds it."""
    return current_runtime().job_policy.max_timeout_s


@bp.post("")
@bp.input(AgentIn, arg_name="body")
@idempotent
@bp.output(AgentOut, status_code=201)
@bp.doc(summary="Register an agent", responses=[201, 409, 412, 422])
@declares(
    headers={201: ["Location", "ETag", "Idempotent-Replayed"]},
    request_headers=["Idempotency-Key", *CREATE_CONDITIONS],
)
def create_agent(body: AgentIn):  # type: ignore[no-untyped-def]
    check_on_create("/v1/agents", "an agent")
    agent = agents.create(
        db(),
        owner_id=current_principal().user_id,
        fields=body.model_dump(),
        max_timeout_s=_max_timeout_s(),
    )
    headers = {"Location": f"/v1/agents/{agent.id}", "ETag": etag(agent.version)}
    return agent_json(agent), 201, headers


@bp.get("")
@bp.input(PageQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(summary="The caller's agents, newest first")
def list_agents(query: PageQuery):  # type: ignore[no-untyped-def]
    page = agents.list_page(
        db(),
        owner_id=current_principal().user_id,
        limit=query.limit,
        cursor=query.cursor,
        max_bytes=page_max_bytes(),
    )
    return {"items": [agent_json(a) for a in page.items], "next_cursor": page.next_cursor}


@bp.get("/<uuid:agent_id>")
@bp.output(AgentOut)
@bp.doc(
    summary="One agent",
    description="`If-None-Match` with its ETag answers 304; `If-Match` without it, 412.",
    responses=[200, 304, 404, 412],
)
@declares(
    headers={200: ["ETag"], 304: ["ETag"]},
    request_headers=["If-Match-Read", "If-None-Match-Read"],
)
def get_agent(agent_id: uuid.UUID):  # type: ignore[no-untyped-def]
    agent = agents.get(db(), owner_id=current_principal().user_id, agent_id=agent_id)
    return conditional_read("agent", agent.version) or (
        agent_json(agent),
        200,
        {"ETag": etag(agent.version)},
    )


@bp.patch("/<uuid:agent_id>")
@bp.input(AgentPatch, arg_name="body")
@bp.output(AgentOut)
@bp.doc(summary="Change an agent; bumps its version", responses=[200, 404, 412, 422])
@declares(headers={200: ["ETag"]}, request_headers=["If-Match", "If-None-Match"])
def update_agent(agent_id: uuid.UUID, body: AgentPatch):  # type: ignore[no-untyped-def]
    agent = agents.update(
        db(),
        owner_id=current_principal().user_id,
        agent_id=agent_id,
        fields=body.model_dump(exclude_unset=True),
        condition=version_condition(),
        max_timeout_s=_max_timeout_s(),
    )
    return agent_json(agent), 200, {"ETag": etag(agent.version)}


@bp.delete("/<uuid:agent_id>")
@bp.doc(
    summary="Delete an agent; the jobs that ran it stay readable",
    description="`If-Match` honoured, as for PATCH.",
    responses=[204, 404, 412, 422],
)
@declares(request_headers=["If-Match", "If-None-Match"])
def delete_agent(agent_id: uuid.UUID):  # type: ignore[no-untyped-def]
    agents.delete(
        db(),
        owner_id=current_principal().user_id,
        agent_id=agent_id,
        condition=version_condition(),
    )
    return "", 204
