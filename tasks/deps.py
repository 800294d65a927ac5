"""What tasks need from the process that runs them, attached to the Celery app by `workers`.

Tasks import this, never `workers`, so the import direction stays `workers -> tasks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from models.db import UnitOfWork
from services.job_execution import Runner
from services.job_policy import JobPolicy
from services.webhook_policy import WebhookPolicy


@dataclass(frozen=True)
class TaskDeps:
    session_factory: sessionmaker[Session]
    job_policy: JobPolicy
    runner: Runner
    webhook_policy: WebhookPolicy = field(default_factory=WebhookPolicy)
    # Units of work for one-statement writes (a job's claim and end): models.db.OneStatement
    # on the worker's engine; None: sessions of `session_factory`.
    single_statement: Callable[[], UnitOfWork] | None = None


def deps_of(task: Any) -> TaskDeps:
    deps: TaskDeps = task.app.conveyor
    return deps
