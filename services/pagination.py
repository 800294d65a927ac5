"""Cursor pagination over UUIDv7 ids: newest first, stable while rows are added."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from services.errors import FieldProblem, InvalidInput

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def decode_cursor(cursor: str | None) -> uuid.UUID | None:
    if not cursor:
        return None
    try:
        return uuid.UUID(hex=cursor)
    except ValueError:
        raise InvalidInput(
            problems=[FieldProblem("cursor", "not a cursor this API returned", "query")]
        ) from None


def page_of(rows: list[T], limit: int) -> Page[T]:
    """`rows` (each with a UUIDv7 `id`) was fetched with limit + 1; the extra one only
    says that more exist."""
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    items = rows[:limit]
    return Page(items=items, next_cursor=items[-1].id.hex)  # type: ignore[attr-defined]


def newest_first(
    session: Session,
    query: Select[tuple[T]],
    id_column: InstrumentedAttribute[Any],
    *,
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """One page of `query`, newest first, after the row the cursor names."""
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(id_column < after)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    return page_of(rows, limit)
