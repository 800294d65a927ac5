"""Shared pieces of the request and response schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.inputs import MAX_METADATA_BYTES, Input, SmallObject

__all__ = ["MAX_METADATA_BYTES", "Input", "Output", "PageOut", "PageQuery", "SmallObject"]


class Output(BaseModel):
    model_config = ConfigDict(extra="allow")


class PageQuery(Input):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=64)


class PageOut(Output):
    items: list[dict[str, Any]]
    next_cursor: str | None
