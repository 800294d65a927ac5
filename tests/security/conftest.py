from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from settings import Settings
from tests.conftest import FAST_PASSWORDS


@pytest.fixture
def make_app(
    settings: Settings, session_factory: sessionmaker[Session]
) -> Iterator[Callable[..., Any]]:
    """Apps on the test's database with some settings changed (low limits, say)."""
    apps = []

    def make(**changes: Any) -> Any:
        changed = Settings(**{**settings.model_dump(), **changes})
        app = create_app(changed, session_factory=session_factory, passwords=FAST_PASSWORDS)
        apps.append(app)
        return app

    yield make
    for app in apps:
        # Closing wakes the listener through Redis, which some of these apps cannot reach.
        with contextlib.suppress(redis.RedisError):
            app.extensions["conveyor"].notifier.close()


def client_at(app: Any, address: str | None = None) -> Any:
    """A test client whose requests come from `address` (a fresh random one by default), so
    that rate-limit counters left in Redis by other tests never meet this test's."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address or random_address()
    return client


def random_address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
