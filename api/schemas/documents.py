"""Document bodies and queries. Size limits that come from settings (content bytes, title
length, metadata bytes) are checked by the service, so they follow the deployment."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import orjson
from pydantic import BeforeValidator, Field, model_validator

from api.schemas.common import Input, Output, PageQuery
from services.inputs import MAX_VERSION, ContentType, Title, nesting_depth

MAX_FILTER_CHARS = 4096
# As a body may (JSON_MAX_DEPTH's default): orjson writes 254 levels at most, and a deeper
# filter failed as a 500 when it was sent to PostgreSQL.
MAX_FILTER_DEPTH = 32


def _json_object(value: object) -> object:
    """A query parameter that holds a JSON object, e.g. `metadata={"project":"apollo"}`."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_FILTER_CHARS:
        raise ValueError(f"must be at most {MAX_FILTER_CHARS} characters")
    if "\\u0000" in value:  # PostgreSQL's jsonb holds no NUL: a 500 otherwise
        raise ValueError("must not contain NUL characters (\\u0000)")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValueError('must be a JSON object, such as {"project": "apollo"}') from None
    if nesting_depth(parsed) > MAX_FILTER_DEPTH:
        raise ValueError(f"must not nest deeper than {MAX_FILTER_DEPTH} levels")
    return parsed


class DocumentIn(Input):
    """A new document, or (PUT) the whole new state of one: left-out fields get defaults."""

    title: Title
    content: str
    content_type: ContentType = "text/plain"
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentPatch(Input):
    """The fields to change; the others keep their values. `metadata` is replaced whole."""

    title: Title | None = None
    content: str | None = None
    content_type: ContentType | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> DocumentPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class DocumentQuery(Input):
    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="a past version to read"
    )


class DocumentListQuery(PageQuery):
    q: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description='full-text search, web-search syntax: words, "a phrase", or, -word',
    )
    metadata: Annotated[dict[str, Any] | None, BeforeValidator(_json_object)] = Field(
        default=None,
        description='JSON object the metadata must contain, e.g. {"project": "apollo"}',
    )


class DocumentOut(Output):
    id: uuid.UUID
    title: str
    content: str
    content_type: str
    metadata: dict[str, Any]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
