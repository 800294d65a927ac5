"""Revocations, written where they last and where they are checked.

A revocation (a logout's token and login, a login revoked for a reused refresh token) is
committed to PostgreSQL (services/token_revocations.py) and then set in Redis, which
answers the checks (api/gate.py, api/refresh_tokens.py). Redis alone lost them on a
restart without persistence, and a logged-out token worked again for up to 30 days.

The PostgreSQL write comes first and commits in its own short transaction: a logout's
204 means the revocation is durable, and a reuse, which answers 401 (the request's own
transaction is rolled back), is kept all the same.
"""

from __future__ import annotations

import datetime as dt
import uuid

import redis
from sqlalchemy.orm import Session, sessionmaker

from api import gate
from services import token_revocations


class RevocationStore:
    def __init__(
        self, client: redis.Redis, session_factory: sessionmaker[Session], *, family_ttl_s: int
    ) -> None:
        """`family_ttl_s`: how long a family's revocation lasts, the refresh tokens' life
        (a refresh token issued now is the longest-lived of its family)."""
        self._client = client
        self._sessions = session_factory
        self._family_ttl_s = family_ttl_s

    def revoke_token(self, jti: str, *, owner: uuid.UUID, expires_at: int) -> None:
        """Refuse the token `jti` until it expires (`expires_at`, its `exp`)."""
        self._record(token_revocations.TOKEN, jti, owner, _moment(expires_at))
        gate.revoke(self._client, jti, ttl_s=expires_at - int(_now().timestamp()))

    def revoke_family(self, family: str, *, owner: uuid.UUID) -> None:
        """Refuse every token of the login `family`, access and refresh alike."""
        self.record_family(family, owner=owner)
        gate.revoke_family(self._client, family, ttl_s=self._family_ttl_s)

    def record_family(self, family: str, *, owner: uuid.UUID) -> None:
        """Keep the revocation of `family` that Redis already holds (the refresh script
        revokes a reused token's family itself, atomically with finding the reuse)."""
        expires_at = _now() + dt.timedelta(seconds=self._family_ttl_s)
        self._record(token_revocations.FAMILY, family, owner, expires_at)

    def _record(
        self, kind: str, revoked_id: str, owner: uuid.UUID, expires_at: dt.datetime
    ) -> None:
        with self._sessions() as session:
            token_revocations.record(
                session, kind=kind, revoked_id=revoked_id, owner_id=owner, expires_at=expires_at
            )
            session.commit()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _moment(epoch_s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC)
