"""A worker's sessions and one-statement units on an engine of its own, for tests that run
jobs in-process as a worker process would (tests/unit/test_worker_job_writes.py,
test_job_watch.py)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from models.db import OneStatement, make_engine, make_session_factory
from services import after_commit, agents, job_execution, job_transitions, job_units, jobs
from services.job_policy import JobPolicy
from services.job_transitions import Claim
from tests.conftest import new_user

POLICY = JobPolicy()


class Worker:
    """A worker's sessions and one-statement units on one engine; what commits set off."""

    def __init__(self, database_url: str, pool_size: int) -> None:
        self.engine = make_engine(database_url, pool_size=pool_size, max_overflow=0)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        self.dispatches: list[list[Any]] = []  # each commit's messages, in one dispatch
        after_commit.install(self.sessions, self._dispatch)

    def _dispatch(self, messages: Any) -> None:
        self.dispatches.append(list(messages))

    @property
    def dispatched(self) -> list[Any]:
        return [message for messages in self.dispatches for message in messages]

    def one_statement(self) -> OneStatement:
        return OneStatement(self.engine, lambda info: after_commit.committed(info, self._dispatch))

    def run(self, job_id: uuid.UUID) -> str | None:
        return job_execution.execute(
            self.sessions, job_id, policy=POLICY, single_statement=self.one_statement
        )

    def claim(self, job_id: uuid.UUID) -> Claim | None:
        return job_units.in_transaction(
            self.one_statement,
            lambda unit: job_transitions.claim(unit, job_id=job_id, policy=POLICY),
        )

    def queued_job(self, params: dict[str, Any] | None = None, **submit: Any) -> uuid.UUID:
        """A job of a new user's echo agent (with `params`), queued; nothing dispatched."""
        with self.sessions.begin() as session:
            owner = new_user(session).id
            agent = agents.create(
                session,
                owner_id=owner,
                fields={
                    "name": "echo",
                    "provider": "echo",
                    "model": "echo",
                    "params": params or {},
                },
            )
            job_id = jobs.submit(
                session, owner_id=owner, agent_id=agent.id, input={"text": "hi"}, policy=POLICY,
                **submit,
            ).id  # fmt: skip
        self.dispatches.clear()
        return job_id

    def events(self, job_id: uuid.UUID) -> list[tuple[int, str, dict[str, Any], dict[str, Any]]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT version, type, data, metadata FROM events WHERE stream = :stream "
                    "ORDER BY version"
                ),
                {"stream": f"job-{job_id}"},
            )
            return [tuple(row) for row in rows]  # type: ignore[misc]

    def job(self, job_id: uuid.UUID) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(
                text("SELECT status, attempt, output, error FROM jobs WHERE id = :id"),
                {"id": job_id},
            ).one()
