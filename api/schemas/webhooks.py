from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import Field, StrictBool, model_validator

from api.schemas.common import Input, Output, PageQuery
from services.inputs import Note

EventTypeName = Literal["job.succeeded", "job.failed", "job.cancelled", "job.timed_out"]


class EndpointIn(Input):
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[EventTypeName] = Field(min_length=1, max_length=16)
    description: Note | None = None


class EndpointPatch(Input):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[EventTypeName] | None = Field(default=None, min_length=1, max_length=16)
    description: Note | None = None
    enabled: StrictBool | None = None
    disabled_reason: Note | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> EndpointPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for required in ("url", "event_types", "enabled"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be null")
        return self


class DeliveryQuery(PageQuery):
    job_id: uuid.UUID | None = None
    endpoint_id: uuid.UUID | None = None


class EndpointOut(Output):
    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: dt.datetime | None
    failing_since: dt.datetime | None
    previous_secret_expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class EndpointWithSecretOut(EndpointOut):
    secret: str


class SecretOut(Output):
    secret: str


class AttemptOut(Output):
    attempted_at: dt.datetime
    status_code: int | None
    duration_ms: int
    error: str | None
    response_excerpt: str | None


class DeliveryOut(Output):
    id: uuid.UUID
    endpoint_id: uuid.UUID | None
    job_id: uuid.UUID | None
    url: str | None
    event_type: str
    message_id: str
    status: Literal["pending", "failed", "succeeded", "dead"]
    attempt_count: int
    next_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any]
    attempts: list[AttemptOut]
    created_at: dt.datetime
    updated_at: dt.datetime
