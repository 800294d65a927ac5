"""Shared pieces of the request and response schemas."""

from __future__ import annotations

from typing import Any, ClassVar, Self

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


class CounterCursorQuery(Input):
    """A list paged by a counter (`CURSOR_FOR`, a version or a position) that `cursor`, a
    page's `next_cursor`, may give instead: a client that pages every list by `cursor`
    pages these too. Giving both is refused."""

    CURSOR_FOR: ClassVar[str]
    CURSOR_RANGE: ClassVar[tuple[int, int]]

    cursor: str | None = Field(default=None, max_length=64)

    @field_validator("cursor")
    @classmethod
    def _a_counter(cls, cursor: str | None) -> str | None:
        if cursor is not None:
            low, high = cls.CURSOR_RANGE
            value = parse_counter(cursor, high)
            if value is None or value < low:
                raise ValueError("not a cursor this API returned")
        return cursor

    @model_validator(mode="after")
    def _cursor_is_the_counter(self) -> Self:
        if self.cursor is not None:
            if self.CURSOR_FOR in self.model_fields_set:
                raise ValueError(f"give cursor or {self.CURSOR_FOR}, not both")
            setattr(self, self.CURSOR_FOR, int(self.cursor))
        return self


class VersionPageQuery(CounterCursorQuery):
    """A stream's events in version order, from `from_version`."""

    CURSOR_FOR = "from_version"
    CURSOR_RANGE = (1, MAX_VERSION)

    from_version: int = Field(default=1, ge=1, le=MAX_VERSION)
    limit: int = Field(default=100, ge=1, le=1000)


class PageOut(Output):
    items: list[dict[str, Any]]
    next_cursor: str | None
