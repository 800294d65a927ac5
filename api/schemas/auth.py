from __future__ import annotations

import uuid

from pydantic import Field

from api.schemas.common import Input, Output

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"


class Credentials(Input):
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
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
