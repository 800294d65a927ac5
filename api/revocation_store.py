"""Revocations, written where they last and where they are checked.

A revocation (a logout's token and login, a login revoked for a reused refresh token) is
committed to PostgreSQL (services/token_revocations.py) and then set in Redis, which
answers the checks (api/gate.py, api/refresh_tokens.py). Redis alone lost them on a
restart without persistence, and a logged-out token worked again for up to 30 days.

The PostgreSQL write comes first and commits in its own short transaction: a logout's
204 means the revocation is durable, and a reuse, which answers 401 (the request's own
transaction is rolled back), is kept all the same.

**Reload.** `gate.REVOCATIONS_LOADED_KEY` says Redis holds every revocation PostgreSQL
keeps. The checks that already go to Redis (the gate's script, the refresh script, the
check of `require_access_token`) also ask whether that key exists, in the same call: no
round trip is added. Missing (a new or restarted Redis), the web process that finds it so
fills Redis from PostgreSQL before it answers: under a lock in Redis, so that one process
loads while the others wait up to `wait_s` for the key, then answer 503 (unknown, as when
Redis is away). The key is set only by the loader that still holds the lock, so a Redis
that restarts again during a load is not marked loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid

import redis
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api import gate
from services import token_revocations

log = structlog.get_logger("conveyor.api")

_LOADING_KEY = "conveyor:revocations:loading"
_BATCH = 1_000  # revocations per pipeline while loading
_POLL_S = 0.05

# KEYS: the token's revocation key, its family's, gate.REVOCATIONS_LOADED_KEY.
# Returns 1 revoked, 0 not, -1 unknown (the revocations are not loaded).
_CHECK_SCRIPT = """
if redis.call("EXISTS", KEYS[3]) == 0 then
  return -1
end
return math.min(redis.call("EXISTS", KEYS[1], KEYS[2]), 1)
"""

# KEYS: the loading lock, gate.REVOCATIONS_LOADED_KEY. ARGV: this loader's lock token.
# Marks the revocations loaded only if this loader still holds the lock; releases it.
_FINISH_SCRIPT = """
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call("SET", KEYS[2], 1)
redis.call("DEL", KEYS[1])
return 1
"""

_RELEASE_SCRIPT = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("DEL", KEYS[1])
end
return 0
"""


class RevocationStore:
    def __init__(
        self,
        client: redis.Redis,
        session_factory: sessionmaker[Session],
        *,
        family_ttl_s: int,
        wait_s: float = 2.0,
        lock_s: int = 60,
    ) -> None:
        """`family_ttl_s`: how long a family's revocation lasts, the refresh tokens' life
        (a refresh token issued now is the longest-lived of its family). `wait_s`: how long
        a check waits for another process's reload; `lock_s`: how long a reload may take
        before another process may start one (a loader that died frees it then)."""
        self._client = client
        self._sessions = session_factory
        self._family_ttl_s = family_ttl_s
        self._wait_s = wait_s
        self._lock_s = lock_s
        self._check = client.register_script(_CHECK_SCRIPT)
        self._finish = client.register_script(_FINISH_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def is_revoked(self, jti: str, family: str | None) -> bool | None:
        """Whether the token `jti` (of `family`) is revoked, Redis filled again first if it
        has lost the revocations; None when that cannot be done now. Redis errors
        propagate."""
        answer = self._ask(jti, family)
        if answer is None and self.reload():
            answer = self._ask(jti, family)
        return answer

    def reload(self) -> bool:
        """Fill Redis from PostgreSQL unless it holds the revocations already; whether it
        does now. One process loads; the others wait for it, up to `wait_s`."""
        if self._client.exists(gate.REVOCATIONS_LOADED_KEY):
            return True
        token = uuid.uuid4().hex
        if self._client.set(_LOADING_KEY, token, nx=True, ex=self._lock_s):
            return self._load(token)
        deadline = time.monotonic() + self._wait_s
        while time.monotonic() < deadline:
            time.sleep(_POLL_S)  # another process is loading: its key is the signal
            if self._client.exists(gate.REVOCATIONS_LOADED_KEY):
                return True
        return False

    def _load(self, token: str) -> bool:
        started, count = time.monotonic(), 0
        log.warning("revocations.reloading", detail="Redis had lost them (new or restarted)")
        try:
            with self._sessions() as session:
                pipe = self._client.pipeline(transaction=False)
                for revocation in token_revocations.live(session):
                    key = (
                        gate.revoked_key(revocation.revoked_id)
                        if revocation.kind == token_revocations.TOKEN
                        else gate.family_revoked_key(revocation.revoked_id)
                    )
                    # SET, not SETNX: a revocation made meanwhile is the same fact.
                    pipe.set(key, 1, exat=int(revocation.expires_at.timestamp()) + 1)
                    count += 1
                    if len(pipe) >= _BATCH:
                        pipe.execute()
                pipe.execute()
        except SQLAlchemyError:
            log.warning("revocations.reload_failed", exc_info=True)
            self._unlock(token)
            return False
        except redis.RedisError:
            self._unlock(token)
            raise
        loaded = bool(self._finish(keys=[_LOADING_KEY, gate.REVOCATIONS_LOADED_KEY], args=[token]))
        log.warning(
            "revocations.reloaded",
            revocations=count,
            marked_loaded=loaded,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return loaded or bool(self._client.exists(gate.REVOCATIONS_LOADED_KEY))

    def _unlock(self, token: str) -> None:
        """Let the next check try the load again at once; if Redis cannot be told, the
        lock expires after `lock_s`."""
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[_LOADING_KEY], args=[token])

    def _ask(self, jti: str, family: str | None) -> bool | None:
        answer = int(
            self._check(keys=[*gate.revocation_keys(jti, family), gate.REVOCATIONS_LOADED_KEY])
        )
        return None if answer < 0 else bool(answer)

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
