"""Every setting Conveyor reads, and the only place the environment is read.

Composition roots (`api/__init__.py`, `workers/__init__.py`, `migrations/env.py`, `cli.py`)
build a `Settings` and hand its values down; nothing else imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

from limits import parse_many
from pydantic import AliasChoices, Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.documents import Limits as DocumentLimits
from services.event_store import MAX_DATA_BYTES as MAX_EVENT_DATA_BYTES
from services.inputs import JsonLimits
from services.job_policy import JobPolicy
from services.llm import DEFAULT_MAX_CONVERSATION_BYTES, ProviderConfig
from services.webhook_policy import DEFAULT_RETRY_SCHEDULE_S, WebhookPolicy, parse_networks

# The development default is public, so it must never sign tokens anywhere else.
DEV_JWT_SECRET = "conveyor-development-secret-change-me"  # noqa: S105
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/conveyor"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_SECRET_LENGTH = 32

# Variables renamed, by their old name: the new one. A renamed field still reads its old
# name (`_also_old_name`; the new name first, so it wins when both are set), and the
# Celery processes warn at startup while the old name alone is set.
RENAMED_VARIABLES = {"LLM_MAX_ANSWER_BYTES": "LLM_MAX_CONVERSATION_BYTES"}


class SettingsError(ValueError):
    """A setting makes the process unsafe or unable to start."""


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _also_old_name(variable: str) -> AliasChoices:
    """The names a renamed field reads, new before old."""
    old = [before for before, now in RENAMED_VARIABLES.items() if now == variable]
    return AliasChoices(variable.lower(), *(name.lower() for name in old))


def renamed_variables_in_use(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The renamed variables set under their old name only (old name: new name), read as
    `Settings` reads them: in any case, an empty one unset."""
    environ = os.environ if environ is None else environ
    present = {name.upper() for name, value in environ.items() if value}
    return {
        old: new for old, new in RENAMED_VARIABLES.items() if old in present and new not in present
    }


class Settings(BaseSettings):
    # An empty variable is an unset one: compose passes `OPENAI_BASE_URL: ${OPENAI_BASE_URL:-}`
    # as "" when the operator sets nothing, which replaced the default URL with "" and an
    # integer setting's "" stopped the process.
    # validate_by_name: a renamed field (its aliases, the variables) also takes its own
    # name as a keyword, as every other field does.
    model_config = SettingsConfigDict(
        extra="ignore", case_sensitive=False, env_ignore_empty=True, validate_by_name=True
    )

    conveyor_env: Literal["development", "test", "production"] = "development"

    database_url: str = DEFAULT_DATABASE_URL
    # Per web process. Kept connections cover the usual concurrency of a gthread worker
    # (32 threads); bursts overflow up to one per thread. A connection made and closed for
    # each request past the pool costs more than the request itself.
    database_pool_size: int = Field(default=16, ge=1, le=200)
    database_max_overflow: int = Field(default=16, ge=0, le=200)
    # The longest a web request's statement may run (PostgreSQL's statement_timeout on the
    # web's connections; 0: no limit). Past it the request answers 503: a table locked by a
    # migration held every request (and so every admission slot) for as long as it lasted.
    web_statement_timeout_ms: int = Field(default=10_000, ge=0, le=3_600_000)
    redis_url: str = DEFAULT_REDIS_URL
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "INFO"

    jwt_secret_key: str = DEV_JWT_SECRET
    jwt_access_ttl_s: int = Field(default=900, ge=30, le=86_400)
    jwt_refresh_ttl_s: int = Field(default=30 * 86_400, ge=60, le=365 * 86_400)
    registration_enabled: bool = True

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Flower's own variables (it reads them too); see workers/operations.py.
    flower_basic_auth: str | None = None
    flower_address: str = "127.0.0.1"
    flower_port: int = Field(default=5555, ge=1, le=65535)

    # Operations: the worker's Prometheus endpoint (off unless a port is given), and how
    # long a cold shutdown (SIGQUIT, a second Ctrl-C) lets running tasks finish.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_address: str = "127.0.0.1"
    worker_soft_shutdown_timeout_s: float = Field(default=20.0, ge=0)
    # Beat's schedule database (Celery's `beat_schedule_filename`; shelve adds suffixes).
    # /tmp suits a container, whose one writable place it is; `conveyor dev` gives each run
    # a directory of its own, since one path in /tmp is shared by every checkout and user.
    beat_schedule_file: str = "/tmp/conveyor-celerybeat-schedule"  # noqa: S108

    # Limits on what a request may carry.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # A page of jobs, events, agents or deliveries also ends after the item that takes its
    # JSON (inputs, outputs, data) to this many bytes; the next page goes on from there.
    page_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A live tail's pages (SSE) end sooner: a tail whose client does not read holds its
    # page, as Python objects, while its send waits (docs/DECISIONS.md, HTTP). Never more
    # than page_max_bytes.
    live_page_max_bytes: int = Field(default=256 * 1024, ge=1024)
    max_queue_depth: int = Field(default=10_000, ge=1)
    # Long-polls and live streams that one web process lets wait at once; keep it below
    # gunicorn's threads per worker so short requests always find a thread.
    max_waiting_requests: int = Field(default=24, ge=1)
    max_stream_s: float = Field(default=300.0, gt=0)
    event_max_data_bytes: int = Field(default=MAX_EVENT_DATA_BYTES, ge=1024)

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
    # Jobs one worker runs at once, a pool process each; unset: two per core
    # (workers.celery_app.default_worker_concurrency).
    worker_concurrency: int | None = Field(default=None, ge=1, le=256)
    # A pool process whose peak RSS passed this, in MiB, is replaced after its task (0: never).
    # One big answer or batch leaves a process holding memory that glibc does not give
    # back; a pool process of the bench stays near 120 MiB.
    worker_max_memory_per_child_mb: int = Field(default=300, ge=0, le=1_000_000)

    # The `openai` provider: any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama,
    # vLLM, LM Studio, a LiteLLM proxy). The SDK's own variable names.
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = None
    llm_request_timeout_s: float = Field(default=120.0, gt=0)
    # The most of one model conversation a worker holds: a request, which carries every
    # turn before it, and its answer (one step's stream); past it the job fails
    # (services/llm_http.py). Named LLM_MAX_ANSWER_BYTES until it bounded more than the
    # answer; that name still works, deprecated.
    llm_max_conversation_bytes: int = Field(
        default=DEFAULT_MAX_CONVERSATION_BYTES,
        ge=64 * 1024,
        validation_alias=_also_old_name("LLM_MAX_CONVERSATION_BYTES"),
    )

    # Webhook deliveries (services/webhook_policy.py says what each one does).
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_retry_schedule: Annotated[list[Annotated[float, Field(ge=0)]], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S)
    )
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=60)
    webhook_disable_after_s: float = Field(default=5 * 86_400, gt=0)
    webhook_secret_overlap_s: float = Field(default=86_400, ge=0)
    webhook_republish_after_s: float = Field(default=10.0, gt=0)

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

    # Admission control per web process (api/admission.py): requests in the application
    # at once, and how long a request may wait for that, counted from its arrival, before
    # it is answered 503 + Retry-After instead.
    admission_slots: int = Field(default=16, ge=1, le=1024)
    admission_max_wait_ms: int = Field(default=500, ge=1, le=60_000)
    # ... and how long while the process is behind: at least ADMISSION_BEHIND_QUEUE
    # requests waiting, for a slot or for a thread. gunicorn's 32 threads hold at most
    # 32 - 16 = 16 waiting for a slot, so 17 means one more is queued for a thread: more
    # work offered than the process serves. A closed loop of clients, however busy, never
    # gets there (at 16, the bench's 32 connections on one process once did, and a slow
    # moment of the VM answered a 503 in a closed loop).
    admission_behind_wait_ms: int = Field(default=50, ge=1, le=60_000)
    admission_behind_queue: int = Field(default=17, ge=1, le=10_000)
    # Slow clients, which hold a gunicorn thread each (api/server_worker.py): the most a
    # request's line and headers may take to arrive; the most its body may take, from
    # its head on (408 past it; MAX_BODY_BYTES in 30 s is 70 KB/s); and the most one send
    # of an answer may wait for a client that does not read (for a live tail on Linux: the
    # most its client may go without acknowledging any byte, api/send_bounds.py).
    web_request_head_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    web_request_body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    web_send_timeout_s: float = Field(default=30.0, gt=0, le=3600)

    # Security (docs/DECISIONS.md, Security). Rate limits are `limits` strings such as
    # "30/minute;500/hour", counted in the Redis at REDIS_URL, so all web workers count together.
    rate_limit_enabled: bool = True
    # Every request with a valid credential counts for its user (token and API keys alike);
    # a request without one counts for its client IP.
    rate_limit_default: str = "6000/minute"
    # Login and register: per client IP, and per email address in the body.
    rate_limit_auth_per_ip: str = "30/minute"
    rate_limit_auth_per_email: str = "10/minute"
    # How long a process trusts Redis's "not revoked" for an access token before asking
    # again (api/gate.py): a token revoked through another web process may work that much
    # longer. 0 asks on every request (a Redis round trip each).
    token_revocation_recheck_s: float = Field(default=1.0, ge=0, le=60)
    # A refresh token presented again this soon after its rotation gets the same successor
    # (a lost answer retried, two refreshes racing) instead of revoking its family as a
    # reuse (api/refresh_tokens.py). 0: every second use is a reuse.
    refresh_reuse_grace_s: float = Field(default=10.0, ge=0, le=60)
    # Proxies (CIDRs) whose X-Forwarded-For is believed; otherwise the socket's address counts.
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    # JSON request bodies, checked before schema validation: nesting depth (orjson cannot
    # write back past 254), object keys, and any one string (a backstop: per-field limits
    # such as DOCUMENT_MAX_CONTENT_BYTES are lower and answer first).
    json_max_depth: int = Field(default=32, ge=2, le=200)
    json_max_key_chars: int = Field(default=1024, ge=16)
    json_max_string_chars: int = Field(default=2 * 1024 * 1024, ge=256)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("rate_limit_default", "rate_limit_auth_per_ip", "rate_limit_auth_per_email")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            limits = parse_many(value)
        except ValueError as error:
            raise ValueError(f'not a rate limit such as "30/minute;500/hour": {error}') from None
        if any(limit.amount < 1 for limit in limits):
            # It could never be met; to turn limits off, RATE_LIMIT_ENABLED=false says so.
            raise ValueError("a limit allows at least 1 request (RATE_LIMIT_ENABLED=false: none)")
        return value

    @field_validator("webhook_allowed_networks", "webhook_retry_schedule", mode="before")
    @classmethod
    def _webhook_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # a ValueError names the CIDR that is not one
        return value

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

    def document_limits(self) -> DocumentLimits:
        return DocumentLimits(
            max_content_bytes=self.document_max_content_bytes,
            max_title_length=self.document_max_title_length,
            max_metadata_bytes=self.document_max_metadata_bytes,
        )

    def json_limits(self) -> JsonLimits:
        """The shape of what a client or an agent sends: request bodies, tool arguments."""
        return JsonLimits(
            max_depth=self.json_max_depth,
            max_key_chars=self.json_max_key_chars,
            max_string_chars=self.json_max_string_chars,
        )

    def llm_providers(self) -> dict[str, ProviderConfig]:
        """OpenAI-compatible providers by the name agents use."""
        return {
            "openai": ProviderConfig(
                base_url=self.openai_base_url,
                api_key=self.openai_api_key,
                request_timeout_s=self.llm_request_timeout_s,
                max_conversation_bytes=self.llm_max_conversation_bytes,
            )
        }

    def webhook_policy(self) -> WebhookPolicy:
        return WebhookPolicy(
            allowed_networks=parse_networks(self.webhook_allowed_networks),
            retry_schedule_s=tuple(self.webhook_retry_schedule),
            timeout_s=self.webhook_timeout_s,
            disable_after_s=self.webhook_disable_after_s,
            secret_overlap_s=self.webhook_secret_overlap_s,
            republish_after_s=self.webhook_republish_after_s,
        )

    @property
    def is_development(self) -> bool:
        return self.conveyor_env == "development"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; a clear message instead of a traceback on bad values."""
    return Settings(**overrides)  # type: ignore[arg-type]
