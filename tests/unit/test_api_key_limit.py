"""The live-key limit under concurrent creates: committed transactions on separate
connections, as the API's are."""

import threading

from sqlalchemy import func, select

from models import ApiKey
from models.db import make_session_factory
from services import api_keys
from services.errors import Conflict
from tests.conftest import new_user

RACERS = 20


def test_racing_creates_at_the_limit_let_exactly_one_in(engine):
    committed = make_session_factory(engine)
    with committed.begin() as session:
        owner = new_user(session).id
        for n in range(api_keys.MAX_ACTIVE_KEYS - 1):
            api_keys.create(session, owner_id=owner, name=f"k{n}")
    start = threading.Barrier(RACERS)
    outcomes: list[str] = []

    def create() -> None:
        start.wait(timeout=30)
        try:
            with committed.begin() as session:
                api_keys.create(session, owner_id=owner, name="racer")
            outcomes.append("created")
        except Conflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created"] + ["refused"] * (RACERS - 1)
    with committed() as session:
        live = session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.owner_id == owner, ApiKey.revoked_at.is_(None))
        )
    assert live == api_keys.MAX_ACTIVE_KEYS
