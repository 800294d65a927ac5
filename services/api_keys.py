"""API keys for machine clients: created with the key shown once, kept as SHA-256 only.

A key is `cvk_` and 43 characters of `secrets.token_urlsafe(32)`: 256 random bits. With that
much entropy a fast hash is as safe as a slow one (nobody can enumerate 2^256 inputs), and
unlike a salted Argon2 hash it can be looked up by an index on every request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from models import ApiKey, User
from services import quotas
from services.errors import NotFound
from services.pagination import Page, decode_cursor, page_of

KEY_PREFIX = "cvk_"
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 8
MAX_KEY_LENGTH = 128
MAX_ACTIVE_KEYS = 100
# last_used_at is written when it is older than this, so a busy key costs one UPDATE a minute.
TOUCH_INTERVAL = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class NewKey:
    row: ApiKey
    key: str  # the only time the key exists outside the client


@dataclass(frozen=True)
class KeyOwner:
    key_id: uuid.UUID
    user_id: uuid.UUID
    role: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create(session: Session, *, owner_id: uuid.UUID, name: str) -> NewKey:
    """A new key for `owner_id`; `Conflict` past MAX_ACTIVE_KEYS live keys."""
    quotas.check_room(
        session,
        owner_id=owner_id,
        counted=select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None)),
        limit=MAX_ACTIVE_KEYS,
        refusal=f"at most {MAX_ACTIVE_KEYS} API keys may be live at once; revoke one",
    )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        owner_id=owner_id, name=name, prefix=key[:SHOWN_PREFIX_LENGTH], key_hash=digest(key)
    )
    session.add(row)
    session.flush()
    return NewKey(row=row, key=key)


def list_page(
    session: Session, *, owner_id: uuid.UUID, limit: int, cursor: str | None
) -> Page[ApiKey]:
    """The owner's live keys, newest first."""
    query = select(ApiKey).where(ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None))
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(ApiKey.id < after)
    rows = list(session.scalars(query.order_by(ApiKey.id.desc()).limit(limit + 1)))
    return page_of(rows, limit)


def get(session: Session, *, owner_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    """One of the owner's live keys (without the key: only its digest is kept)."""
    key = session.scalar(
        select(ApiKey).where(
            ApiKey.id == key_id, ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None)
        )
    )
    if key is None:
        raise NotFound("no API key with this id")
    return key


def revoke(session: Session, *, owner_id: uuid.UUID, key_id: uuid.UUID) -> None:
    """Revoke one of the owner's live keys; `NotFound` for anything else."""
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(ApiKey.id)
    ).first()
    if revoked is None:
        raise NotFound("no API key with this id")


def authenticate(session: Session, *, key: str) -> KeyOwner | None:
    """The live key `key` and its owner, or None. Records the time of use, at most once per
    TOUCH_INTERVAL; the caller commits."""
    if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_LENGTH:
        return None
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < func.now() - TOUCH_INTERVAL)
    found = session.execute(
        select(ApiKey.id, ApiKey.owner_id, User.role, stale.label("stale"))
        .join(User, User.id == ApiKey.owner_id)
        .where(ApiKey.key_hash == digest(key), ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if found is None:
        return None
    if found.stale:
        # Conditional, so that concurrent requests with one key write it once.
        session.execute(
            update(ApiKey).where(ApiKey.id == found.id, stale).values(last_used_at=func.now())
        )
    return KeyOwner(key_id=found.id, user_id=found.owner_id, role=found.role)
