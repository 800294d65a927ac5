"""Every setting Conveyor reads, and the only place the environment is read.

Composition roots (`api/__init__.py`, `workers/__init__.py`, `migrations/env.py`, `cli.py`)
build a `Settings` and hand its values down; nothing else imports this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.job_policy import JobPolicy

# The development default is public, so it must never sign tokens anywhere else.
DEV_JWT_SECRET = "conveyor-development-secret-change-me"  # noqa: S105
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/conveyor"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_SECRET_LENGTH = 32


class SettingsError(ValueError):
    """A setting makes the process unsafe or unable to start."""


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    conveyor_env: Literal["development", "test", "production"] = "development"

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(default=10, ge=1, le=200)
    redis_url: str = DEFAULT_REDIS_URL
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"

    jwt_secret_key: str = DEV_JWT_SECRET
    jwt_access_ttl_s: int = Field(default=900, ge=30, le=86_400)
    jwt_refresh_ttl_s: int = Field(default=30 * 86_400, ge=60, le=365 * 86_400)
    registration_enabled: bool = True

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    flower_basic_auth: str | None = None

    # Limits on what a request may carry.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_page_size: int = Field(default=200, ge=1, le=1000)
    max_wait_s: float = Field(default=30.0, ge=0, le=120)
    max_queue_depth: int = Field(default=10_000, ge=1)
    # Long-polls and live streams that one web process lets wait at once; keep it below
    # gunicorn's threads per worker so short requests always find a thread.
    max_waiting_requests: int = Field(default=24, ge=1)
    max_stream_s: float = Field(default=300.0, gt=0)
    event_max_data_bytes: int = Field(default=64 * 1024, ge=1024)

    # Job execution.
    job_default_timeout_s: int = Field(default=300, ge=1)
    job_max_timeout_s: int = Field(default=3600, ge=1)
    job_default_queue_timeout_s: int = Field(default=3600, ge=1)
    job_max_queue_timeout_s: int = Field(default=7 * 86_400, ge=1)
    job_default_max_attempts: int = Field(default=3, ge=1, le=20)
    job_lease_s: int = Field(default=30, ge=2)
    job_grace_s: int = Field(default=5, ge=1)
    job_republish_after_s: int = Field(default=10, ge=1)
    job_retry_base_s: float = Field(default=1.0, gt=0)
    job_retry_max_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)

    # Fault tests only: "exit_before_publish" kills the process right after a commit, before
    # its Celery messages are published. Refused in production.
    fault_injection: Literal["exit_before_publish"] | None = None

    # Documents. Content is counted in UTF-8 bytes; keep it below MAX_BODY_BYTES, which
    # bounds the whole JSON request (escaping can make a body larger than its content).
    document_max_content_bytes: int = Field(default=1024 * 1024, ge=1)
    document_max_title_length: int = Field(default=500, ge=1, le=10_000)
    document_max_metadata_bytes: int = Field(default=16 * 1024, ge=2)
    # Per web process: serialized current versions of hot documents; 0 turns the cache off.
    document_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        # Heroku-style URLs name no driver; SQLAlchemy would pick psycopg2, which we do not ship.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_secrets(self) -> Settings:
        if self.conveyor_env == "development":
            return self
        if self.jwt_secret_key == DEV_JWT_SECRET or len(self.jwt_secret_key) < MIN_SECRET_LENGTH:
            raise SettingsError(
                f"JWT_SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} "
                f"characters when CONVEYOR_ENV={self.conveyor_env}; "
                'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        if self.conveyor_env == "production" and self.fault_injection:
            raise SettingsError("FAULT_INJECTION is for tests and is refused in production")
        if "*" in self.cors_origins:
            raise SettingsError("CORS_ORIGINS may not contain '*' outside development")
        return self

    def job_policy(self) -> JobPolicy:
        return JobPolicy(
            default_timeout_s=self.job_default_timeout_s,
            max_timeout_s=self.job_max_timeout_s,
            default_queue_timeout_s=self.job_default_queue_timeout_s,
            max_queue_timeout_s=self.job_max_queue_timeout_s,
            default_max_attempts=self.job_default_max_attempts,
            max_queue_depth=self.max_queue_depth,
            lease_s=self.job_lease_s,
            grace_s=self.job_grace_s,
            republish_after_s=self.job_republish_after_s,
            retry_base_s=self.job_retry_base_s,
            retry_max_s=self.job_retry_max_s,
        )

    @property
    def is_development(self) -> bool:
        return self.conveyor_env == "development"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a clear message instead of a traceback on bad values."""
    return Settings(**overrides)  # type: ignore[arg-type]
