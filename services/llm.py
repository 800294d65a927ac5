"""OpenAI-compatible chat providers: clients by configured name, and errors sorted into
transient and permanent in words a job's owner understands, never with the API key."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import openai

from services import retry_after
from services.agent_errors import PermanentAgentError, TransientAgentError
from services.errors import in_chain
from services.llm_http import AnswerTooLarge, BoundedClient, UnreadableAnswer

DEFAULT_MAX_CONVERSATION_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str
    api_key: str | None
    request_timeout_s: float = 60.0
    # The most of one conversation held: a request (every turn before it) and its answer
    # (one step's stream, with its framing), as read from the provider.
    max_conversation_bytes: int = DEFAULT_MAX_CONVERSATION_BYTES


@dataclass(frozen=True)
class Provider:
    client: openai.OpenAI
    http: BoundedClient  # the client's connections: `abort_requests` cuts its requests


class Providers:
    """One client per configured provider and thread (it pools connections). Per thread,
    because stopping an attempt cuts every request of its client (`Provider.http`); in
    Celery's prefork pool that is one client per provider and process."""

    def __init__(self, configs: Mapping[str, ProviderConfig]) -> None:
        self._configs = dict(configs)
        self._local = threading.local()

    def names(self) -> list[str]:
        return sorted(self._configs)

    def get(self, name: str) -> Provider:
        if name not in self._configs:
            raise PermanentAgentError(f"provider {name!r} is not configured on this server")
        made: dict[str, Provider] = self._local.__dict__.setdefault("providers", {})
        if name not in made:
            config = self._configs[name]
            http = BoundedClient(max_conversation_bytes=config.max_conversation_bytes)
            client = openai.OpenAI(
                base_url=config.base_url,
                # The SDK refuses to start without a key; local servers (Ollama) need none.
                api_key=config.api_key or "not-needed",
                timeout=config.request_timeout_s,
                # Retries belong to the job (backoff, Retry-After, attempts), not the SDK.
                max_retries=0,
                http_client=http,
            )
            made[name] = Provider(client, http)
        return made[name]

    def timeout_s(self, name: str) -> float:
        return self._configs[name].request_timeout_s


MAX_RETRY_AFTER_S = 3600.0


def classify(error: Exception, provider: str) -> Exception:
    """The agent error for a provider failure: transient (retry) or permanent (fail now)."""
    too_large = in_chain(error, AnswerTooLarge)  # raised as it is, or wrapped by the SDK
    if too_large is not None:
        return too_large_error(too_large, provider)
    unreadable = in_chain(error, UnreadableAnswer)
    if unreadable is not None:
        return malformed(provider, unreadable.what)
    if isinstance(error, openai.APITimeoutError):
        return TransientAgentError(f"the {provider} provider did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return TransientAgentError(f"the {provider} provider could not be reached")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status in _TRANSIENT_STATUSES or status >= 500:
            return TransientAgentError(
                f"the {provider} provider answered {status}; will retry",
                retry_after_s=_retry_after(error),
            )
        reason = _PERMANENT_REASONS.get(status, "rejected the request")
        return PermanentAgentError(f"the {provider} provider {reason} ({status})")
    if isinstance(error, openai.APIError):  # an error event in the answer's stream
        return malformed(provider, "reported an error in the middle of its answer")
    return error


def too_large_error(error: AnswerTooLarge, provider: str) -> Exception:
    """An answer past its bound. Too long as a whole (with the turns before it) is
    permanent: asked again, the model would answer at the same length, at the same cost.
    A line without end is a broken stream, the provider's fault like any malformed
    answer."""
    if error.whole:
        return PermanentAgentError(
            f"the conversation with the {provider} provider passed {error.limit} bytes,"
            " the most held of one job's turns (answers, tool calls and results); ask for"
            " shorter answers (max_tokens) or fewer steps"
        )
    return malformed(provider, f"sent a line of its answer longer than {error.limit} bytes")


def malformed(provider: str, what: str) -> TransientAgentError:
    """A provider's answer we cannot use: its fault, so the attempt is retried. Its own
    words stay out (of the job's error and of the log): they may echo what we sent."""
    return TransientAgentError(f"the {provider} provider {what}")


# Asked again, these succeed: a timeout, a conflict (OpenAI documents 409 for a request
# that clashed with another one of the same resource), too many requests.
_TRANSIENT_STATUSES = frozenset({408, 409, 429})

_PERMANENT_REASONS = {
    400: "rejected the request as invalid",
    401: "refused the API key configured for it",
    403: "does not allow this request with the configured API key",
    404: "does not know this model or endpoint",
    422: "could not process the request",
}


def _retry_after(error: openai.APIStatusError) -> float | None:
    """The provider's Retry-After, at most an hour."""
    asked = retry_after.seconds(error.response.headers.get("retry-after"))
    return min(asked, MAX_RETRY_AFTER_S) if asked is not None else None
