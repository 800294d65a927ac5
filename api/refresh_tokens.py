"""Refresh-token rotation with reuse detection (OAuth 2.0 Security BCP, RFC 9700, 4.14.2).

Every refresh answers a new refresh token and retires the one presented, so a stolen refresh
token is found out as soon as its owner and the thief have both used it. The tokens one
login begins form a *family*: claim `fam`, the id of the login's refresh token. A token
signed before families existed has no `fam` and is the first of a family named by its own
`jti`, so nobody is logged out by the deploy.

Redis keeps one record per family: the newest refresh token's id (`current`), the one it
replaced (`previous`), when that happened (Redis's clock, so the web hosts' clocks do not
matter) and the newest one's `iat`/`exp`. One Lua script reads and writes it, so two
refreshes with one token cannot both rotate it. The presented token is

- `current`, or its family has no record (it is the login's token, never rotated):
  **rotated**, a new successor becomes `current`;
- `previous`, rotated less than the grace ago (REFRESH_REUSE_GRACE_S): **retried**, the
  same successor is signed again (same id, same expiry): a client whose answer was lost,
  or two refreshes racing, end on one chain, not two. Once the successor has been used it
  is no longer `previous`: no grace for a token whose successor has been seen;
- already rotated by this very refresh (Redis ran the script, its reply was lost, and
  redis-py sent it again): the first run's answer, whatever the grace;
- anything else: **reused** (a retired token came back, from the thief or the owner, the
  second of them): the family is revoked (api/gate.py), its refresh and access tokens alike.

A token revoked by id (logout before families) or whose family is revoked is refused.

One record per family, not a blocklist entry per retired token: a client refreshing every
15 minutes would leave 2,880 entries living 30 days each.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from api import gate

_RECORD_PREFIX = "conveyor:refresh-family:"

# KEYS: the family's record, the family's revocation key, the token's revocation key,
# gate.REVOCATIONS_LOADED_KEY.
# ARGV: the presented token's id, grace (s), then the successor to use if it is rotated now
# (id, iat, exp), then how long a revocation of the family must last (s).
# Returns {outcome, successor id, iat, exp}; outcome "rotated" or "retried", or {"revoked"}
# or {"reused"} (which has just revoked the family), or {"unloaded"}: Redis has lost the
# revocations, and nothing is decided until they are back.
_SCRIPT = """
if redis.call("EXISTS", KEYS[4]) == 0 then
  return {"unloaded"}
end
if redis.call("EXISTS", KEYS[2], KEYS[3]) > 0 then
  return {"revoked"}
end
local now = redis.call("TIME")
local record = redis.call("HMGET", KEYS[1], "current", "previous", "rotated_s", "rotated_us",
                          "iat", "exp")
if record[1] == ARGV[3] and record[2] == ARGV[1] then
  -- This very call has rotated it already: the client library sent the script again after
  -- losing its reply (redis-py retries once). ARGV[3] is new to each call, so no other
  -- refresh can match; without this, a grace of 0 took the retry for a reuse.
  return {"rotated", record[1], record[5], record[6]}
end
if record[1] and record[1] ~= ARGV[1] then
  local grace = tonumber(ARGV[2])
  if record[2] == ARGV[1] and grace > 0 then
    local elapsed = (now[1] - record[3]) + (now[2] - record[4]) / 1000000
    if elapsed < grace then
      return {"retried", record[1], record[5], record[6]}
    end
  end
  redis.call("SET", KEYS[2], 1, "EX", ARGV[6])
  redis.call("DEL", KEYS[1])
  return {"reused"}
end
-- TIME's seconds and microseconds as they come: a float of both, written back by Lua's
-- tostring (14 digits), was rounded up to 0.1 ms, and a rotation 30 us later looked earlier.
redis.call("HSET", KEYS[1], "current", ARGV[3], "previous", ARGV[1],
           "rotated_s", now[1], "rotated_us", now[2], "iat", ARGV[4], "exp", ARGV[5])
redis.call("EXPIREAT", KEYS[1], ARGV[5])
return {"rotated", ARGV[3], ARGV[4], ARGV[5]}
"""


class RevocationsUnloaded(Exception):
    """Redis has lost the revocations (api/revocation_store.py fills it again): whether
    the token was revoked is unknown, and nothing was rotated."""


class Retired(Exception):
    """The refresh token may not be refreshed. `reused`: it had been rotated already, and
    its family has just been revoked."""

    def __init__(self, *, reused: bool) -> None:
        super().__init__("reused" if reused else "revoked")
        self.reused = reused


@dataclass(frozen=True)
class Successor:
    """The identity and times of a refresh token to sign: claims that override
    flask-jwt-extended's own, so a retried refresh signs the very token it signed before."""

    jti: str
    family: str
    issued_at: int
    expires_at: int

    def claims(self) -> dict[str, Any]:
        return {
            "jti": self.jti,
            "fam": self.family,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "exp": self.expires_at,
        }


def family_of(payload: dict[str, Any]) -> str:
    """The family of a verified token; a token from before families heads its own."""
    family = payload.get("fam")
    return family if isinstance(family, str) and family else str(payload["jti"])


def access_family(payload: dict[str, Any]) -> str | None:
    """The family of an access token, or None for one signed before families."""
    family = payload.get("fam")
    return family if isinstance(family, str) and family else None


class RefreshTokens:
    def __init__(self, client: redis.Redis, *, ttl_s: int, reuse_grace_s: float) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self.ttl_s = ttl_s
        self._grace_s = reuse_grace_s

    def first(self) -> Successor:
        """The refresh token of a login, which begins a family of its own."""
        jti, now = str(uuid.uuid4()), int(time.time())
        return Successor(jti, jti, now, now + self.ttl_s)

    def rotate(self, payload: dict[str, Any]) -> Successor:
        """The successor of a verified refresh token, recorded in Redis before it is
        returned; Retired when the token may not be refreshed, RevocationsUnloaded when
        Redis cannot tell. Redis errors propagate: no refresh succeeds without its rotation
        recorded."""
        family, jti, now = family_of(payload), str(payload["jti"]), int(time.time())
        answer = self._script(
            keys=[
                _RECORD_PREFIX + family,
                gate.family_revoked_key(family),
                gate.revoked_key(jti),
                gate.REVOCATIONS_LOADED_KEY,
            ],
            args=[jti, self._grace_s, str(uuid.uuid4()), now, now + self.ttl_s, self.ttl_s],
        )
        outcome = _text(answer[0])
        if outcome == "unloaded":
            raise RevocationsUnloaded
        if outcome not in ("rotated", "retried"):
            raise Retired(reused=outcome == "reused")
        return Successor(_text(answer[1]), family, int(answer[2]), int(answer[3]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
