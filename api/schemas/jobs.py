from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AnyHttpUrl, Field, StrictInt, UrlConstraints, model_validator

from api.schemas.common import Input, Output, PageQuery, SmallObject, VersionPageQuery

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
MAX_URL_CHARS = 2048


def _short_as_sent(url: AnyHttpUrl) -> AnyHttpUrl:
    # The URL as stored and sent is percent-encoded, so it can be longer than what came.
    if len(str(url)) > MAX_URL_CHARS:
        raise ValueError(f"must be at most {MAX_URL_CHARS} characters once percent-encoded")
    return url


# Its length bounded as given (UrlConstraints, which also puts `maxLength` in the document)
# and as sent; each error names the field.
WebhookUrl = Annotated[
    AnyHttpUrl, UrlConstraints(max_length=MAX_URL_CHARS), AfterValidator(_short_as_sent)
]


class Message(Input):
    # No "tool": a tool message answers a model's tool call by its id, which this input
    # cannot carry, and a chat provider refuses one without (each such job failed).
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class JobInput(Input):
    text: str | None = Field(default=None, max_length=1_000_000)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=1000)
    documents: list[uuid.UUID] | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _something_to_do(self) -> JobInput:
        if self.text is None and self.messages is None:
            raise ValueError("give text or messages")
        return self


class JobIn(Input):
    agent_id: uuid.UUID
    input: JobInput
    webhook_url: WebhookUrl | None = Field(default=None)
    metadata: SmallObject = Field(default_factory=dict)
    timeout_s: StrictInt | None = Field(default=None, ge=1)
    queue_timeout_s: StrictInt | None = Field(
        default=None,
        ge=1,
        description="seconds the job may wait in the queue before it starts, else it ends "
        "`timed_out`; counted anew each time it is queued: at submit, at a retry, and after "
        "a transient failure (from the end of its backoff) or a lost worker",
    )
    max_attempts: StrictInt | None = Field(default=None, ge=1, le=20)


class JobListQuery(PageQuery):
    status: JobStatus | None = None
    agent_id: uuid.UUID | None = None


class WaitQuery(Input):
    wait: float = Field(default=0, ge=0, le=30, allow_inf_nan=False)


class EventsQuery(VersionPageQuery):
    pass


class JobOut(Output):
    id: uuid.UUID
    agent_id: uuid.UUID
    agent_version: int
    status: JobStatus
    input: dict[str, Any]
    output: dict[str, Any] | None = Field(
        description="the agent's result; a model's has text, usage, steps and finish_reason"
    )
    error: dict[str, Any] | None
    attempt: int
    max_attempts: int
    timeout_s: int
    queue_timeout_s: int | None = Field(
        description="seconds it may wait in the queue each time it is queued (null for a "
        "job submitted before the server kept it)"
    )
    webhook_url: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
