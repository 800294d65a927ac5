"""What request handlers need from the process, built once by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.queue_depth import QueueDepth
from services.job_policy import JobPolicy
from services.passwords import Passwords
from settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    redis: redis.Redis
    # A client whose every call gives up after a second: readiness must answer promptly.
    redis_probe: redis.Redis
    passwords: Passwords
    job_policy: JobPolicy
    queue_depth: QueueDepth
