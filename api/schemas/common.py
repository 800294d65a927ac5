"""Shared pieces of the request and response schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.inputs import MAX_METADATA_BYTES, MAX_VERSION, Input, SmallObject, parse_counter

__all__ = [
    "MAX_METADATA_BYTES",
    "Input",
    "Output",
    "PageOut",
    "PageQuery",
    "SmallObject",
    "VersionPageQuery",
]


class Output(BaseModel):
    model_config = ConfigDict(extra="allow")


class PageQuery(Input):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=64)


class VersionPageQuery(Input):
    """A stream's events in version order, from `from_version`. `cursor` (a page's
    `next_cursor`) says the same, so a client that pages every list by `cursor` pages these
    too; giving both is refused."""

    from_version: int = Field(default=1, ge=1, le=MAX_VERSION)
    cursor: str | None = Field(default=None, max_length=64)
    limit: int = Field(default=100, ge=1, le=1000)

    @field_validator("cursor")
    @classmethod
    def _a_version(cls, cursor: str | None) -> str | None:
        if cursor is not None and not parse_counter(cursor, MAX_VERSION):
            raise ValueError("not a cursor this API returned")
        return cursor

    @model_validator(mode="after")
    def _cursor_is_from_version(self) -> VersionPageQuery:
        if self.cursor is not None:
            if "from_version" in self.model_fields_set:
                raise ValueError("give cursor or from_version, not both")
            self.from_version = int(self.cursor)
        return self


class PageOut(Output):
    items: list[dict[str, Any]]
    next_cursor: str | None
