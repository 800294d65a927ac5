from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import AfterValidator, Field

from api.schemas.common import Input, Output

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
_EMAIL = re.compile(EMAIL_PATTERN)


def _an_email(email: str) -> str:
    # Checked here rather than by `pattern`, whose refusal quoted the regex to the client.
    if not _EMAIL.match(email):
        raise ValueError("must be an email address, like name@example.com")
    return email


# The pattern stays in the OpenAPI document for clients to check before they send.
Email = Annotated[
    str,
    Field(max_length=320, json_schema_extra={"pattern": EMAIL_PATTERN}),
    AfterValidator(_an_email),
]


class Credentials(Input):
    email: Email
    # Bounded above because Argon2 hashes whatever it is given.
    password: str = Field(min_length=12, max_length=1024)


class LoginIn(Input):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class LogoutIn(Input):
    refresh_token: str | None = Field(default=None, max_length=4096)


class UserOut(Output):
    id: uuid.UUID
    email: str
    role: str | None = None


class TokensOut(Output):
    access_token: str
    # Login's and refresh's alike: a refresh retires the refresh token it was sent.
    refresh_token: str
    token_type: str
    expires_in: int
