"""Shared pieces of the request and response schemas."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_METADATA_BYTES = 16 * 1024


class Input(BaseModel):
    """Base of every request body and query: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class Output(BaseModel):
    model_config = ConfigDict(extra="allow")


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


SmallObject = Annotated[dict[str, Any], AfterValidator(_small_json)]


class PageQuery(Input):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=64)


class PageOut(Output):
    items: list[dict[str, Any]]
    next_cursor: str | None
