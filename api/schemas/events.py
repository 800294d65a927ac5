from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from api.schemas.common import Input, Output, VersionPageQuery
from services.inputs import (
    MAX_APPEND,
    MAX_POSITION,
    MAX_STREAM_CHARS,
    STREAM_PATTERN,
    EventIn,
    ExpectedVersionIn,
    parse_counter,
)

MAX_BATCH = 1000


class AppendIn(Input):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_APPEND)
    expected_version: ExpectedVersionIn = Field(default="any")


class BatchEventIn(EventIn):
    stream: str = Field(pattern=STREAM_PATTERN, max_length=MAX_STREAM_CHARS)


class BatchIn(Input):
    events: list[BatchEventIn] = Field(min_length=1, max_length=MAX_BATCH)


class StreamQuery(VersionPageQuery):
    pass


class FeedQuery(Input):
    """From after `after`, a position; `cursor` (a page's `next_cursor`) says the same, so a
    client that pages every list by `cursor` pages the feed too (it was refused as an
    unknown parameter); giving both is refused."""

    after: int = Field(default=0, ge=0, le=MAX_POSITION)
    cursor: str | None = Field(default=None, max_length=64)
    type: str | None = Field(default=None, max_length=2000, description="comma-separated types")
    limit: int = Field(default=100, ge=1, le=1000)

    @field_validator("cursor")
    @classmethod
    def _a_position(cls, cursor: str | None) -> str | None:
        if cursor is not None and parse_counter(cursor, MAX_POSITION) is None:
            raise ValueError("not a cursor this API returned")
        return cursor

    @model_validator(mode="after")
    def _cursor_is_after(self) -> FeedQuery:
        if self.cursor is not None:
            if "after" in self.model_fields_set:
                raise ValueError("give cursor or after, not both")
            self.after = int(self.cursor)
        return self


class AppendOut(Output):
    first_version: int
    last_version: int
    positions: list[int]


class ReceiptOut(Output):
    receipt_id: uuid.UUID
    status: Literal["pending", "persisted", "rejected"]
    results: list[dict[str, Any]] | None
    accepted_at: dt.datetime
    persisted_at: dt.datetime | None
