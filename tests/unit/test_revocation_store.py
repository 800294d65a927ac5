"""Redis filled again from PostgreSQL once it has lost the revocations (a restart without
persistence), on a real Redis and PostgreSQL."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from api.gate import REVOCATIONS_LOADED_KEY, family_revoked_key, revoked_key
from api.revocation_store import RevocationStore
from tests.conftest import new_user

LOADING_KEY = "conveyor:revocations:loading"


@pytest.fixture
def client(redis_url: str):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(redis_url)
    yield client
    client.delete(LOADING_KEY)
    client.close()


@pytest.fixture
def owner(session_factory):  # type: ignore[no-untyped-def]
    with session_factory() as session:
        user = new_user(session)
        session.commit()
        return user.id


def _store(client, session_factory, **kwargs):  # type: ignore[no-untyped-def]
    return RevocationStore(client, session_factory, family_ttl_s=3600, **kwargs)


def test_revocations_lost_by_redis_are_loaded_back_before_a_check_answers(
    client, session_factory, owner
):
    store = _store(client, session_factory)
    jti, family = str(uuid.uuid4()), str(uuid.uuid4())
    expires_at = int(time.time()) + 900
    store.revoke_token(jti, owner=owner, expires_at=expires_at)
    store.revoke_family(family, owner=owner)
    client.delete(REVOCATIONS_LOADED_KEY, revoked_key(jti), family_revoked_key(family))

    assert store.is_revoked(jti, None) is True
    assert client.exists(REVOCATIONS_LOADED_KEY)
    assert store.is_revoked(str(uuid.uuid4()), family) is True
    assert store.is_revoked(str(uuid.uuid4()), None) is False
    # Each kept as long as its tokens live, no longer.
    assert abs(client.expiretime(revoked_key(jti)) - expires_at) <= 1
    assert 3590 <= client.ttl(family_revoked_key(family)) <= 3601


def test_while_another_process_loads_a_check_waits_then_answers_unknown(
    client, session_factory, owner
):
    store = _store(client, session_factory, wait_s=0.3)
    jti = str(uuid.uuid4())
    store.revoke_token(jti, owner=owner, expires_at=int(time.time()) + 900)
    client.delete(REVOCATIONS_LOADED_KEY, revoked_key(jti))
    client.set(LOADING_KEY, "another process", ex=60)

    started = time.monotonic()
    assert store.is_revoked(jti, None) is None  # unknown: the caller answers 503
    assert 0.3 <= time.monotonic() - started < 5
    assert not client.exists(revoked_key(jti))  # the lock holder's to load, not ours

    client.delete(LOADING_KEY)  # that process died: its lock is gone
    assert store.is_revoked(jti, None) is True


def test_a_load_whose_lock_was_lost_does_not_mark_redis_loaded(client, session_factory, owner):
    """Redis restarted again during the load (the lock went with everything else): what
    was set before is gone, so the revocations must not be taken for loaded."""
    store = _store(client, session_factory)
    client.delete(REVOCATIONS_LOADED_KEY)
    assert client.set(LOADING_KEY, "ours", nx=True, ex=60)
    client.delete(LOADING_KEY)  # the restart
    assert store._load("ours") is False
    assert not client.exists(REVOCATIONS_LOADED_KEY)
