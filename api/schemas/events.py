from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import Field

from api.schemas.common import Input, Output, SmallObject

STREAM_PATTERN = r"^[A-Za-z0-9._:\-]{1,200}$"
TYPE_PATTERN = r"^[A-Za-z0-9._:\-/]{1,200}$"
MAX_APPEND = 1000
MAX_BATCH = 1000


class EventIn(Input):
    type: str = Field(pattern=TYPE_PATTERN)
    data: dict[str, Any]
    metadata: SmallObject = Field(default_factory=dict)
    event_id: uuid.UUID | None = None


class AppendIn(Input):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_APPEND)
    expected_version: int | Literal["any", "no_stream"] = Field(default="any")


class BatchEventIn(EventIn):
    stream: str = Field(pattern=STREAM_PATTERN)


class BatchIn(Input):
    events: list[BatchEventIn] = Field(min_length=1, max_length=MAX_BATCH)


class StreamQuery(Input):
    from_version: int = Field(default=1, ge=1)
    limit: int = Field(default=100, ge=1, le=1000)


class FeedQuery(Input):
    after: int = Field(default=0, ge=0)
    type: str | None = Field(default=None, max_length=2000, description="comma-separated types")
    limit: int = Field(default=100, ge=1, le=1000)


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
