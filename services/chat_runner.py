"""An agent on an OpenAI-compatible chat-completions endpoint: stream, call tools, repeat.

Each step streams one model response. Text arrives as `job.output.delta` events, coalesced
so a long answer makes a handful of events, not one per token. Tool calls are validated and
run with the job owner's rights, and their results go back to the model. The run stops at
the agent's `max_steps`, on cancellation or timeout (checked between chunks and steps), and
never holds a database transaction while the model is working.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
from sqlalchemy.exc import DBAPIError

from services.agent_errors import PermanentAgentError
from services.agent_params import CHAT_PARAMS
from services.agent_runner import RunControl
from services.agent_tools import JobScope, ToolBox
from services.inputs import storable_text
from services.llm import Providers, classify, malformed
from services.llm_http import BadAnswer

# Emit buffered text when this much has gathered or this long has passed; but not more
# often than every DELTA_MIN_INTERVAL_S unless DELTA_MAX_CHARS have gathered. Each event is
# a commit: a provider sending chunks of 400 characters and more as fast as it can made an
# event of every chunk.
DELTA_FLUSH_CHARS = 400
DELTA_FLUSH_S = 0.25
DELTA_MIN_INTERVAL_S = 0.05
DELTA_MAX_CHARS = 16_384
# Tool calls run per step; the model hears that the rest were not run.
MAX_TOOL_CALLS_PER_STEP = 32
# Tool calls one answer may hold: past it the job fails (each call, run or not, is a
# message of the conversation and an answer the provider wants).
MAX_TOOL_CALLS_PER_ANSWER = 64
TOO_MANY_TOOL_CALLS = (
    f"not run: at most {MAX_TOOL_CALLS_PER_STEP} tool calls are run per step; ask again"
    " for the rest"
)
MAX_CONTEXT_DOCUMENT_CHARS = 20_000


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, usage: Any) -> None:
        """A chunk's usage; counts that are not token counts are a malformed chunk
        (TypeError, `_take`), not our failure: a string or a 2**70 once failed the job as
        `internal` when the counts were added or written in an event."""
        if usage is None:
            return
        self.prompt_tokens += _tokens(usage.prompt_tokens)
        self.completion_tokens += _tokens(usage.completion_tokens)
        self.total_tokens += _tokens(usage.total_tokens)

    def as_dict(self) -> dict[str, int]:
        return vars(self).copy()


@dataclass
class StepResult:
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # The text's pieces as they stream, joined once at the end: `text += piece` on an
    # attribute copies the whole text each time (100,000 chunks took 6.8 s).
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None


class DeltaBuffer:
    """Gathers streamed text and emits it in coalesced `job.output.delta` events."""

    def __init__(self, control: RunControl, step: int) -> None:
        self._control = control
        self._step = step
        self._pending: list[str] = []
        self._size = 0
        self._flushed_at = time.monotonic()
        self.index = 0

    def add(self, text: str) -> None:
        self._pending.append(text)
        self._size += len(text)
        since = time.monotonic() - self._flushed_at
        if (
            self._size >= DELTA_MAX_CHARS
            or since >= DELTA_FLUSH_S
            or (self._size >= DELTA_FLUSH_CHARS and since >= DELTA_MIN_INTERVAL_S)
        ):
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending, self._size = [], 0
        self._flushed_at = time.monotonic()
        self._control.emit(
            "job.output.delta", {"step": self._step, "index": self.index, "text": text}
        )
        self.index += 1


class Interruptible:
    """What a tool is doing in PostgreSQL, to cancel when the attempt must stop (a
    `RunControl.on_stop` callback): armed by the toolbox while its transaction is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None

    def arm(self, cancel: Callable[[], None] | None) -> None:
        with self._lock:
            self._cancel = cancel

    def __call__(self) -> None:
        with self._lock:  # not disarmed halfway: the transaction stays open meanwhile
            if self._cancel is not None:
                self._cancel()


class ChatRunner:
    def __init__(self, providers: Providers, tools: ToolBox) -> None:
        self._providers = providers
        self._tools = tools

    def __call__(
        self, config: dict[str, Any], job_input: dict[str, Any], control: RunControl
    ) -> dict[str, Any]:
        provider = config["provider"]
        connection = self._providers.get(provider)
        client = connection.client
        if not config.get("model"):
            raise PermanentAgentError("the agent names no model for its provider")
        tool_names = list(config.get("tools") or [])
        messages = self._first_messages(config, job_input, control)
        usage = Usage()
        interruptible = Interruptible()
        control.on_stop(interruptible)
        job = JobScope(control.job_id, control.attempt, control.correlation_id)
        # A stop cuts a request still waiting for the provider's first byte, which closing
        # its stream (below) cannot reach: the attempt ends now, not after the request's
        # timeout (up to LLM_REQUEST_TIMEOUT_S, two minutes by default).
        control.on_stop(connection.http.abort_requests)
        for step in range(1, int(config.get("max_steps") or 1) + 1):
            control.checkpoint()
            control.emit("job.step.started", {"step": step})
            result = self._step(
                client, provider, config, messages, tool_names, usage, control, step
            )
            to_run = result.tool_calls[:MAX_TOOL_CALLS_PER_STEP]
            not_run = result.tool_calls[MAX_TOOL_CALLS_PER_STEP:]
            finished = {"step": step, "finish_reason": result.finish_reason}
            if not_run:
                finished["tool_calls_not_run"] = len(not_run)
            control.emit("job.step.finished", {**finished, "usage": usage.as_dict()})
            if not result.tool_calls:
                return {
                    "text": result.text,
                    "usage": usage.as_dict(),
                    "steps": step,
                    # Why the model stopped: "length" is an answer cut at max_tokens.
                    "finish_reason": result.finish_reason,
                }
            messages.append(
                {
                    "role": "assistant",
                    "content": result.text or None,
                    "tool_calls": result.tool_calls,
                }
            )
            for call in to_run:
                control.checkpoint()
                messages.append(self._run_tool(call, control, step, tool_names, interruptible, job))
            # The provider wants an answer to every call it made.
            messages.extend(
                {"role": "tool", "tool_call_id": call["id"], "content": TOO_MANY_TOOL_CALLS}
                for call in not_run
            )
        return {
            "text": None,
            "usage": usage.as_dict(),
            "steps": config.get("max_steps"),
            "stopped": "max_steps",
            "finish_reason": result.finish_reason,
        }

    def _first_messages(
        self, config: dict[str, Any], job_input: dict[str, Any], control: RunControl
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if config.get("instructions"):
            messages.append({"role": "system", "content": config["instructions"]})
        document_ids = job_input.get("documents") or []
        if document_ids:
            context = self._tools.context_documents(control.owner_id, document_ids)
            messages.append(
                {"role": "system", "content": context[: MAX_CONTEXT_DOCUMENT_CHARS * 5]}
            )
        if job_input.get("messages"):
            messages.extend(dict(m) for m in job_input["messages"])
        if job_input.get("text") is not None:
            messages.append({"role": "user", "content": job_input["text"]})
        return messages

    def _step(
        self,
        client: openai.OpenAI,
        provider: str,
        config: dict[str, Any],
        messages: list[dict[str, Any]],
        tool_names: list[str],
        usage: Usage,
        control: RunControl,
        step: int,
    ) -> StepResult:
        params = dict(config.get("params") or {})
        request: dict[str, Any] = {
            "model": config["model"],
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            # Never wait past the job's deadline for the provider.
            "timeout": max(1.0, min(self._providers.timeout_s(provider), control.remaining_s())),
        }
        for name in CHAT_PARAMS:
            if name in params:
                request[name] = params[name]
        if tool_names:
            request["tools"] = self._tools.specs(tool_names)
        try:
            stream = client.chat.completions.create(**request)
        except (openai.OpenAIError, BadAnswer) as error:
            control.checkpoint()  # no answer by the deadline: timed out, not failed
            raise classify(error, provider) from None
        control.on_stop(stream.close)
        buffer = DeltaBuffer(control, step)
        result = StepResult()
        calls: dict[int, _CallParts] = {}
        try:
            for chunk in _chunks(stream, provider, control):
                control.checkpoint()
                _take(chunk, result, buffer, calls, usage, provider)
        finally:
            stream.close()
        control.checkpoint()
        result.text = "".join(result.pieces)
        if result.finish_reason is None and not result.text and not calls:
            # A 200 that held no answer: an HTML page, a JSON document that is not a
            # stream, chunks without choices. It used to end the job `succeeded`, empty.
            raise malformed(provider, "sent an answer with nothing in it")
        if result.finish_reason is None:
            # The connection closed before the model finished: the text so far is a part,
            # and the last tool call's arguments may be cut. It used to end the job
            # `succeeded` with the part, or run the calls.
            raise malformed(provider, "ended its answer before it was finished")
        buffer.flush()
        result.tool_calls = _with_unique_ids([calls[i].call() for i in sorted(calls)])
        return result

    def _run_tool(
        self,
        call: dict[str, Any],
        control: RunControl,
        step: int,
        allowed: Sequence[str],
        interruptible: Interruptible,
        job: JobScope,
    ) -> dict[str, Any]:
        name = call["function"]["name"]
        arguments = call["function"]["arguments"]
        shown = {"step": step, "call_id": call["id"][:200], "name": name[:200]}
        control.emit("job.tool_call", {**shown, "arguments": arguments[:4000]})
        try:
            outcome = self._tools.execute(
                name,
                arguments,
                owner_id=control.owner_id,
                allowed=allowed,
                time_left_s=control.remaining_s(),
                arm=interruptible.arm,
                job=job,
            )
        except DBAPIError:
            control.checkpoint()  # cancelled or past the deadline: a stop, not a failure
            raise
        control.emit("job.tool_result", {**shown, **outcome.as_event()})
        return {"role": "tool", "tool_call_id": call["id"], "content": outcome.content}


def _chunks(stream: Any, provider: str, control: RunControl) -> Iterator[Any]:
    try:
        yield from stream
    except (openai.OpenAIError, BadAnswer) as error:
        control.checkpoint()  # a stream closed by a cancel or timeout is a stop, not an error
        raise classify(error, provider) from None
    except ValueError:  # a chunk that is not JSON
        control.checkpoint()
        raise malformed(provider, "sent a chunk of its answer that is not JSON") from None
    except Exception:
        control.checkpoint()
        raise


def _take(
    chunk: Any,
    result: StepResult,
    buffer: DeltaBuffer,
    calls: dict[int, _CallParts],
    usage: Usage,
    provider: str,
) -> None:
    """One streamed chunk into the step's text, tool calls and finish reason. The SDK
    builds chunks without checking their types: one whose parts are not what the protocol
    says is the provider's fault (transient), not ours (`internal`)."""
    try:
        usage.add(getattr(chunk, "usage", None))
        for choice in chunk.choices or []:
            delta = choice.delta
            if delta is not None and delta.content:
                text = _text(delta.content)
                result.pieces.append(text)
                buffer.add(text)
            for piece in (delta.tool_calls if delta is not None else None) or []:
                _merge_tool_call(calls, piece)
            if choice.finish_reason:
                result.finish_reason = _text(choice.finish_reason)[:100]
    except (AttributeError, TypeError):
        raise malformed(provider, "sent a chunk its protocol does not allow") from None


def _with_unique_ids(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model that gave two calls one id would have its two results answer the same id,
    which the provider refuses as a request of ours (a permanent failure). Later repeats
    get the id with their position appended, as the call's id everywhere after."""
    seen: set[str] = set()
    for position, call in enumerate(calls):
        if call["id"] in seen:
            call["id"] = f"{call['id']}-{position}"
        seen.add(call["id"])
    return calls


@dataclass
class _CallParts:
    """One tool call as its fragments arrive, joined once by `call`."""

    id: str
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def call(self) -> dict[str, Any]:
        function = {"name": "".join(self.name), "arguments": "".join(self.arguments)}
        return {"id": self.id, "type": "function", "function": function}


def _merge_tool_call(calls: dict[int, _CallParts], piece: Any) -> None:
    """Tool calls stream in fragments keyed by index: the id and name first, then the
    arguments in pieces."""
    if not isinstance(piece.index, int):
        raise TypeError("a tool call without an index")
    if piece.index not in calls and len(calls) == MAX_TOOL_CALLS_PER_ANSWER:
        raise PermanentAgentError(
            f"the model asked for more than {MAX_TOOL_CALLS_PER_ANSWER} tool calls in one"
            " answer, the most taken"
        )
    call = calls.setdefault(piece.index, _CallParts(id=f"call_{piece.index}"))
    if piece.id:
        call.id = _text(piece.id)
    if piece.function is not None:
        if piece.function.name:
            call.name.append(_text(piece.function.name))
        if piece.function.arguments:
            call.arguments.append(_text(piece.function.arguments))


MAX_TOKENS_IN_A_CHUNK = 2**31


def _tokens(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value < MAX_TOKENS_IN_A_CHUNK:
        raise TypeError(f"{value!r} is not a token count")
    return value


def _text(value: Any) -> str:
    """A string of the protocol, with what cannot be stored replaced by U+FFFD (either in a
    model's text failed the job as `internal` when it was written in an event); anything
    else is a malformed chunk (`_take`)."""
    if not isinstance(value, str):
        raise TypeError(f"{type(value).__name__} where the protocol has a string")
    return storable_text(value)
