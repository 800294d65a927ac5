from __future__ import annotations

import datetime as dt
import uuid

from pydantic import Field

from api.schemas.common import Input, Output
from services.inputs import Name


class ApiKeyIn(Input):
    name: Name = Field(description="what the key is for")


class ApiKeyOut(Output):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    created_at: dt.datetime
    last_used_at: dt.datetime | None = Field(description="to the minute")


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="the key itself: shown this once, never again")
