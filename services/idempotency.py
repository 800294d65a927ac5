"""Idempotency-Key: the first answer to a request is stored with the work it did, in the
same transaction, and replayed byte for byte to a retry of the same request.

A transaction-scoped advisory lock on (owner, key) tells a retry that arrives while the
first request is still running: it cannot take the lock and answers 409 at once.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models import IdempotencyKey
from services.errors import Conflict, FieldProblem, InvalidInput
from services.job_transitions import seconds

TTL_S = 24 * 3600
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: bytes
    location: str | None
    etag: str | None = None


def fingerprint(method: str, path: str, canonical_body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), canonical_body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def check_key(key: str) -> None:
    if not (1 <= len(key) <= MAX_KEY_LENGTH) or not key.isascii() or not key.isprintable():
        raise InvalidInput(
            problems=[
                FieldProblem(
                    "Idempotency-Key",
                    f"1 to {MAX_KEY_LENGTH} printable ASCII characters",
                    "header",
                )
            ]
        )


def begin(
    session: Session, *, owner_id: uuid.UUID, key: str, request_fingerprint: str
) -> StoredResponse | None:
    """The stored answer to replay, or None when this request is the first: then the
    caller does the work and calls `remember` in the same transaction."""
    check_key(key)
    locked = session.scalar(
        select(func.pg_try_advisory_xact_lock(func.hashtextextended(f"{owner_id}:{key}", 0)))
    )
    if not locked:
        raise Conflict("a request with this Idempotency-Key is still being processed")
    stored = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.owner_id == owner_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at > func.now() - seconds(TTL_S),
        )
    )
    if stored is None:
        return None
    if stored.fingerprint != request_fingerprint:
        raise InvalidInput(
            problems=[
                FieldProblem(
                    "Idempotency-Key",
                    "this key was used with a different request in the last 24 hours",
                    "header",
                )
            ]
        )
    return StoredResponse(stored.status_code, stored.body, stored.location, stored.etag)


def remember(
    session: Session,
    *,
    owner_id: uuid.UUID,
    key: str,
    request_fingerprint: str,
    response: StoredResponse,
) -> None:
    values = {
        "owner_id": owner_id,
        "key": key,
        "fingerprint": request_fingerprint,
        "status_code": response.status_code,
        "body": response.body,
        "location": response.location,
        "etag": response.etag,
        "created_at": func.now(),
    }
    # An expired record of the same key is replaced.
    statement = insert(IdempotencyKey).values(values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[IdempotencyKey.owner_id, IdempotencyKey.key],
            set_={k: statement.excluded[k] for k in values if k not in ("owner_id", "key")},
        )
    )
