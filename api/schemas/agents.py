from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import Field, StrictInt, model_validator

from api.schemas.common import Input, Output, SmallObject
from services.inputs import SMALL_OBJECT, Name

ToolName = Literal["documents.search", "documents.read", "documents.write", "events.append"]
Provider = Literal["echo", "openai"]


MODEL = "the provider's name of the model, one line; required unless the provider is echo"
TOOLS = "each at most once"
PARAMS = (
    "an openai agent's go to the model: temperature (0-2), top_p (0-1), max_tokens (>= 1), "
    "seed (an integer) and stop (a string or up to 4), no other name; an echo agent's "
    f"delay_ms (0-600000) is how long it pretends to work; {SMALL_OBJECT}"
)
TIMEOUT = "its jobs' timeout when a submit gives none; at most this deployment's JOB_MAX_TIMEOUT_S"


class AgentIn(Input):
    name: Name
    provider: Provider
    model: Name | None = Field(default=None, description=MODEL)
    instructions: str | None = Field(default=None, max_length=100_000)
    params: SmallObject = Field(default_factory=dict, description=PARAMS)
    tools: list[ToolName] = Field(default_factory=list, max_length=16, description=TOOLS)
    max_steps: StrictInt = Field(default=8, ge=1, le=100)
    timeout_s: StrictInt | None = Field(default=None, ge=1, description=TIMEOUT)


class AgentPatch(Input):
    name: Name | None = None
    provider: Provider | None = None
    model: Name | None = Field(default=None, description=MODEL)
    instructions: str | None = Field(default=None, max_length=100_000)
    params: SmallObject | None = Field(default=None, description=PARAMS)
    tools: list[ToolName] | None = Field(default=None, max_length=16, description=TOOLS)
    max_steps: StrictInt | None = Field(default=None, ge=1, le=100)
    timeout_s: StrictInt | None = Field(default=None, ge=1, description=TIMEOUT)

    @model_validator(mode="after")
    def _not_empty(self) -> AgentPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        for required in ("name", "provider", "params", "tools", "max_steps"):
            if required in self.model_fields_set and getattr(self, required) is None:
                raise ValueError(f"{required} cannot be null")
        return self


class AgentOut(Output):
    id: uuid.UUID
    name: str
    provider: str
    model: str | None
    instructions: str | None
    params: dict[str, Any]
    tools: list[str]
    max_steps: int
    timeout_s: int | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
