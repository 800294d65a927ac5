"""Agents: versioned configurations that jobs run."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Agent
from services import agent_params, preconditions
from services.errors import FieldProblem, InvalidInput, NotFound
from services.job_policy import check_seconds
from services.pagination import ByteBound, Page, newest_first
from services.preconditions import VersionCondition

# The fields a job copies at submit time; changing the agent later does not change the job.
CONFIG_FIELDS = ("provider", "model", "instructions", "params", "tools", "max_steps", "timeout_s")


def create(
    session: Session,
    *,
    owner_id: uuid.UUID,
    fields: dict[str, Any],
    max_timeout_s: int | None = None,
) -> Agent:
    """A new agent at version 1; `max_timeout_s`, the deployment's maximum for a job
    (JOB_MAX_TIMEOUT_S), bounds its `timeout_s`."""
    _check_runnable(fields)
    _check_timeout(fields, max_timeout_s)
    agent = Agent(owner_id=owner_id, version=1, **fields)
    session.add(agent)
    session.flush()
    return agent


def get(session: Session, *, owner_id: uuid.UUID, agent_id: uuid.UUID) -> Agent:
    """The owner's live agent; `NotFound` for another owner's or a deleted one."""
    agent = session.get(Agent, agent_id)
    if agent is None or agent.owner_id != owner_id or agent.deleted_at is not None:
        raise NotFound("no agent with this id")
    return agent


def list_page(
    session: Session, *, owner_id: uuid.UUID, limit: int, cursor: str | None, max_bytes: int
) -> Page[Agent]:
    """A page of live agents, newest first; it ends early after the agent whose
    instructions and params reach `max_bytes`."""
    query = select(Agent).where(Agent.owner_id == owner_id, Agent.deleted_at.is_(None))
    bound = ByteBound(Agent, [Agent.instructions, Agent.params], max_bytes)
    return newest_first(session, query, Agent.id, limit=limit, cursor=cursor, bounded=bound)


def update(
    session: Session,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    fields: dict[str, Any],
    condition: VersionCondition | None = None,
    max_timeout_s: int | None = None,
) -> Agent:
    """Apply a partial update and bump the version; `condition` (If-Match) guards lost
    updates, and `max_timeout_s` bounds a new `timeout_s` as `create` does."""
    agent = _lock(session, owner_id=owner_id, agent_id=agent_id, condition=condition)
    _check_runnable({name: getattr(agent, name) for name in CONFIG_FIELDS} | fields)
    _check_timeout(fields, max_timeout_s)
    for name, value in fields.items():
        setattr(agent, name, value)
    agent.version += 1
    session.flush()
    return agent


def delete(
    session: Session,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    condition: VersionCondition | None = None,
) -> None:
    """Soft delete: the agent disappears, the jobs that ran it stay readable. `condition`
    guards it as it guards an update: a client deleting what it last saw at version 1
    must not delete changes it never saw."""
    agent = _lock(session, owner_id=owner_id, agent_id=agent_id, condition=condition)
    agent.deleted_at = func.now()
    session.flush()


def _check_timeout(fields: dict[str, Any], max_timeout_s: int | None) -> None:
    """A `timeout_s` past the deployment's maximum for a job is refused: it was bounded by a
    fixed 3600 only, and with JOB_MAX_TIMEOUT_S lower an agent gave its jobs more than the
    deployment allows (a job's submit now caps the agent's value as well)."""
    if max_timeout_s is not None:
        check_seconds("timeout_s", fields.get("timeout_s"), max_timeout_s)


def _check_runnable(config: dict[str, Any]) -> None:
    """`InvalidInput` naming what makes an agent configuration wrong for every job: a chat
    provider without a model (each job failed at its run, "names no model"), one tool
    listed twice (each request to the model described that function twice), or params its
    jobs could not run with (services/agent_params.py). Checked on the agent as a change
    leaves it, so a PATCH cannot take the model away either."""
    problems = []
    if config["provider"] != "echo" and not (config.get("model") or "").strip():
        problems.append(FieldProblem("model", f"the {config['provider']} provider needs a model"))
    tools = config.get("tools") or []
    repeated = sorted({tool for tool in tools if tools.count(tool) > 1})
    if repeated:
        problems.append(FieldProblem("tools", f"lists {', '.join(repeated)} more than once"))
    for field, detail in agent_params.problems(config["provider"], config.get("params") or {}):
        problems.append(FieldProblem(field, detail))
    if problems:
        raise InvalidInput(problems=problems)


def _lock(
    session: Session,
    *,
    owner_id: uuid.UUID,
    agent_id: uuid.UUID,
    condition: VersionCondition | None,
) -> Agent:
    """The live agent, locked; 412 when its version does not meet `condition`."""
    agent = session.scalar(
        select(Agent)
        .where(Agent.id == agent_id, Agent.owner_id == owner_id, Agent.deleted_at.is_(None))
        .with_for_update()
    )
    if agent is None:
        raise NotFound("no agent with this id")
    preconditions.check(condition, "agent", agent.version)
    return agent
