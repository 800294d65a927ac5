from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from api.schemas.common import CounterCursorQuery, Input, Output, PageQuery, VersionPageQuery
from services.inputs import (
    MAX_APPEND,
    MAX_POSITION,
    MAX_STREAM_CHARS,
    MAX_VERSION,
    STREAM_PATTERN,
    TYPE_PATTERN,
    EventIn,
    ExpectedVersionIn,
)

MAX_BATCH = 1000


class AppendIn(Input):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_APPEND)
    expected_version: ExpectedVersionIn = Field(default="any")


class BatchEventIn(EventIn):
    # Declared, and checked by the route (`stream_problem`) with the reserved names and the
    # data's size: as the schema's error it came alone, and those waited for the next try.
    stream: str = Field(
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_STREAM_CHARS,
            "pattern": STREAM_PATTERN,
        }
    )


class BatchIn(Input):
    events: list[BatchEventIn] = Field(min_length=1, max_length=MAX_BATCH)


class StreamQuery(VersionPageQuery):
    """Forward from `from_version` (1: the first event), or backward, newest first, from
    `from_version` down (left out: from the last event). `cursor` is the next version to
    read in the request's direction."""

    from_version: int = Field(
        default=1,
        ge=1,
        le=MAX_VERSION,
        description="the first version to read; backward, the highest (left out: the last)",
    )
    direction: Literal["forward", "backward"] = Field(
        default="forward",
        description="`backward`: newest first, from `from_version` (or the last event) down",
    )

    @model_validator(mode="after")
    def _backward_from_the_end(self) -> StreamQuery:
        if self.direction == "backward" and "from_version" not in self.model_fields_set:
            self.from_version = MAX_VERSION  # past the last version: from the end
        return self


class FeedQuery(CounterCursorQuery):
    """The feed from after `after`, a position (`cursor` was refused as an unknown
    parameter)."""

    CURSOR_FOR = "after"
    CURSOR_RANGE = (0, MAX_POSITION)

    after: int = Field(default=0, ge=0, le=MAX_POSITION)
    type: str | None = Field(
        default=None,
        max_length=2000,
        description="comma-separated event types (each as an event's `type` is written)",
    )
    limit: int = Field(default=100, ge=1, le=1000)

    @field_validator("type")
    @classmethod
    def _event_types(cls, raw: str | None) -> str | None:
        # A type no event can have matched nothing, which a quiet feed answers too: a
        # client that mistyped its filter waited for events that could never come. One
        # that names no type at all would have been no filter: the whole feed.
        if raw is None:
            return None
        types = feed_types(raw)
        if not types:
            raise ValueError("name at least one event type, or leave the parameter out")
        for event_type in types:
            if not _TYPE.match(event_type):
                raise ValueError(
                    f"{event_type[:50]!r} is no event type: each comma-separated type is 1 "
                    "to 200 letters, digits, '.', '_', ':', '-' or '/'"
                )
        return raw


_TYPE = re.compile(TYPE_PATTERN)


def feed_types(raw: str | None) -> list[str]:
    """The types a feed's `type` lists: comma-separated, spaces around them and empty items
    (`a,,b`, a trailing comma) dropped."""
    return [t.strip() for t in raw.split(",") if t.strip()] if raw else []


# A prefix of stream names: any of their characters, even only dots ("." is a prefix of ".a").
PREFIX_PATTERN = r"^[A-Za-z0-9._:\-]+$"


class StreamListQuery(PageQuery):
    """`cursor` is the last stream name of the previous page."""

    cursor: str | None = Field(default=None, pattern=STREAM_PATTERN, max_length=MAX_STREAM_CHARS)
    prefix: str | None = Field(
        default=None,
        pattern=PREFIX_PATTERN,
        max_length=MAX_STREAM_CHARS,
        description="only streams whose names start with this",
    )


class StreamOut(Output):
    stream: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


class AppendOut(Output):
    first_version: int
    last_version: int
    positions: list[int]


# One event's result in a receipt, in the batch's order. Declared only: results are stored
# as the worker wrote them (older receipts' rejected results have no `stream`).
_RESULT_SCHEMA = {
    "type": "object",
    "required": ["event_id", "status"],
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "status": {
            "type": "string",
            "enum": ["persisted", "duplicate", "rejected", "not_persisted"],
            "description": "`duplicate`: appended before with the same body (its version "
            "and position); `not_persisted`: another event of the batch was rejected",
        },
        "stream": {"type": "string"},
        "version": {"type": "integer", "description": "persisted and duplicate events"},
        "position": {"type": "integer", "description": "persisted and duplicate events"},
        "reason": {"type": "string", "description": "rejected and not_persisted events"},
    },
}


class ReceiptOut(Output):
    receipt_id: uuid.UUID
    status: Literal["pending", "persisted", "rejected"]
    results: list[dict[str, Any]] | None = Field(
        json_schema_extra={"anyOf": [{"type": "array", "items": _RESULT_SCHEMA}, {"type": "null"}]}
    )
    accepted_at: dt.datetime
    persisted_at: dt.datetime | None
