"""The durable record of revocations: kept for as long as they matter, then swept in
bounded runs."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from models import TokenRevocation
from services import token_revocations
from services.token_revocations import FAMILY, TOKEN
from tests.conftest import new_user

NOW = dt.datetime.now(dt.UTC)
# Older than anything another test can leave behind: the sweep takes the oldest first.
LONG_AGO = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)


def _kept(session, owner):
    rows = session.execute(
        select(TokenRevocation.revoked_id).where(TokenRevocation.owner_id == owner)
    )
    return set(rows.scalars())


def _record(session, owner, revoked_id, expires_at, kind=TOKEN):
    token_revocations.record(
        session, kind=kind, revoked_id=revoked_id, owner_id=owner, expires_at=expires_at
    )


def test_the_sweep_deletes_expired_revocations_only(session):
    owner = new_user(session).id
    _record(session, owner, "expired", LONG_AGO)
    _record(session, owner, "live", NOW + dt.timedelta(minutes=15))
    _record(session, owner, "family", NOW + dt.timedelta(days=30), kind=FAMILY)
    token_revocations.delete_expired(session, limit=1_000)
    assert _kept(session, owner) == {"live", "family"}
    assert {r.revoked_id for r in token_revocations.live(session)} >= {"live", "family"}


def test_the_sweep_deletes_at_most_its_limit_oldest_first(session):
    owner = new_user(session).id
    for n in range(3):
        _record(session, owner, f"expired-{n}", LONG_AGO + dt.timedelta(seconds=n))
    assert token_revocations.delete_expired(session, limit=2) == 2
    assert _kept(session, owner) == {"expired-2"}
    assert token_revocations.delete_expired(session, limit=2) >= 1
    assert _kept(session, owner) == set()


def test_a_revocation_recorded_twice_keeps_the_later_end(session):
    owner = new_user(session).id
    family = str(uuid.uuid4())
    _record(session, owner, family, NOW + dt.timedelta(days=30), kind=FAMILY)
    _record(session, owner, family, NOW + dt.timedelta(days=1), kind=FAMILY)
    (kept,) = [r for r in token_revocations.live(session) if r.revoked_id == family]
    assert kept.expires_at > NOW + dt.timedelta(days=29)
