"""The durable record of revoked tokens and logins (models/token_revocations.py).

Redis answers every revocation check; PostgreSQL keeps each revocation too, so Redis can
be filled again after losing them. Functions take the caller's session and only flush.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.token_revocations import FAMILY, TOKEN, TokenRevocation

__all__ = ["FAMILY", "TOKEN", "Revocation", "delete_expired", "live", "record"]


@dataclass(frozen=True)
class Revocation:
    kind: str  # TOKEN or FAMILY
    revoked_id: str
    expires_at: dt.datetime


def record(
    session: Session, *, kind: str, revoked_id: str, owner_id: uuid.UUID, expires_at: dt.datetime
) -> None:
    """Keep a revocation until `expires_at`; revoked again, it lasts the longer of the two
    (a family revoked by a logout and again by a reuse: the later end)."""
    statement = insert(TokenRevocation).values(
        kind=kind, revoked_id=revoked_id, owner_id=owner_id, expires_at=expires_at
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[TokenRevocation.kind, TokenRevocation.revoked_id],
            set_={
                "expires_at": func.greatest(
                    TokenRevocation.expires_at, statement.excluded.expires_at
                )
            },
        )
    )


def live(session: Session, *, batch: int = 5_000) -> Iterator[Revocation]:
    """Every revocation that still matters, streamed (a server-side cursor, `batch` rows at
    a time), for filling Redis."""
    rows = session.execute(
        select(TokenRevocation.kind, TokenRevocation.revoked_id, TokenRevocation.expires_at)
        .where(TokenRevocation.expires_at > func.now())
        .execution_options(yield_per=batch)
    )
    for kind, revoked_id, expires_at in rows:
        yield Revocation(kind, revoked_id, expires_at)


def delete_expired(session: Session, *, limit: int) -> int:
    """Delete at most `limit` revocations whose tokens have all expired; how many. Bounded,
    so a sweep after a long pause takes several runs rather than one long lock."""
    expired = (
        select(TokenRevocation.kind, TokenRevocation.revoked_id)
        .where(TokenRevocation.expires_at <= func.now())
        .order_by(TokenRevocation.expires_at)
        .limit(limit)
    )
    result = session.execute(
        delete(TokenRevocation).where(
            tuple_(TokenRevocation.kind, TokenRevocation.revoked_id).in_(expired)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
