"""Cursor pagination over UUIDv7 ids: newest first, stable while rows are added; pages
bounded by bytes as well as by count (`bounded_rows`)."""

from __future__ import annotations

import functools
import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnExpressionArgument, Select, Text, cast, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

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
    bounded: ByteBound | None = None,
) -> Page[T]:
    """One page of `query`, newest first, after the row the cursor names; with `bounded`,
    ended early once its rows hold more bytes than it allows."""
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(id_column < after)
    if bounded is None:
        rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
        return page_of(rows, limit)
    items, more = bounded_rows(session, query, [id_column.desc()], bounded, limit=limit)
    return Page(items=items, next_cursor=items[-1].id.hex if more else None)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ByteBound:
    """A page ends after the row that takes the JSON text of `columns`, summed over its
    rows, to `max_bytes` or more; its first row always comes, however large.

    A page of 200 jobs whose inputs and outputs are megabytes each (or of 1,000 events of
    64 KB) was read whole into the web process, then turned into Python objects and JSON
    at once: hundreds of megabytes for one request."""

    entity: type[Any]
    columns: Sequence[ColumnExpressionArgument[Any]]
    max_bytes: int


def bounded_rows(
    session: Session,
    query: Select[tuple[T]],
    order_by: Sequence[ColumnExpressionArgument[Any]],
    bound: ByteBound,
    *,
    limit: int,
) -> tuple[list[T], bool]:
    """A page of up to `limit` rows of `query` (a select of `bound.entity`) in `order_by`
    order within `bound`, and whether more rows follow it.

    One statement, so that a page reads one snapshot: PostgreSQL sums the sizes in order
    over `limit` + 1 rows and sends only those that start within the bound. Rows that do
    not are never sent, though they were read (`limit` bounds that)."""
    size = functools.reduce(
        operator.add,
        [func.coalesce(func.octet_length(cast(column, Text)), 0) for column in bound.columns],
    )
    limited = (
        query.add_columns(
            size.label("own_bytes"),
            func.sum(size).over(order_by=order_by).label("bytes_so_far"),
            func.row_number().over(order_by=order_by).label("row_number"),
        )
        .order_by(*order_by)
        .limit(limit + 1)
        .subquery()
    )
    counted = select(limited, func.count().over().label("rows_read")).subquery()
    row = aliased(bound.entity, counted)
    kept = session.execute(
        select(row, counted.c.rows_read)
        .where(counted.c.bytes_so_far - counted.c.own_bytes < bound.max_bytes)
        .order_by(counted.c.row_number)
    ).all()
    rows = [found for found, _ in kept[:limit]]
    # More follow when the bound left rows out, or when the one row past `limit` came.
    return rows, bool(kept) and (len(kept) < kept[0][1] or len(kept) > limit)
