"""The tools an agent may be given, run with the job owner's rights only.

Arguments come from the model as JSON text; they are validated with the same input models
as the HTTP API, and any problem (bad JSON, invalid fields, a 404, a conflict) becomes an
error message for the model rather than a crash of the job. Results are truncated so one
tool call cannot flood the model's context.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
import pydantic_core
from pydantic import Field, ValidationError, model_validator
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from models import Document, Job
from services import documents, event_store
from services.errors import ServiceError
from services.event_store import NewEvent
from services.inputs import (
    MAX_STREAM_CHARS,
    STREAM_PATTERN,
    ContentType,
    EventIn,
    ExpectedVersionIn,
    Input,
    JsonLimits,
    Title,
    Version,
    is_reserved_stream,
    same_json,
    shape_problem,
    unstorable,
)
from services.preconditions import VersionCondition

MAX_RESULT_CHARS = 8_000
_PAST_THE_DEADLINE_MS = 200
_BOUND_WAITS = text(
    "SELECT set_config('statement_timeout', :ms, true), set_config('lock_timeout', :ms, true)"
)
SEARCH_LIMIT = 10
# Names the ids of the `document.created` events of a job's creates (`JobScope`).
_CREATES = uuid.UUID("5b0c6f1e-2f43-4c1a-9a0e-7d3f8c2b6a10")


class SearchArgs(Input):
    query: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=5, ge=1, le=SEARCH_LIMIT)


class ReadArgs(Input):
    id: uuid.UUID
    version: Version | None = None


class WriteArgs(Input):
    """Create a document, or with `id` replace one the owner has; with `version` too, only
    if it is still at that version (what documents.read returned), so that a change made
    meanwhile is not overwritten unseen."""

    id: uuid.UUID | None = None
    version: Version | None = None
    # The title's, the content's and the metadata's sizes are the deployment's
    # (DOCUMENT_MAX_*), which `documents` checks, as for the API.
    title: Title
    content: str
    content_type: ContentType = "text/markdown"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _version_of_a_document(self) -> WriteArgs:
        # Ignored, it turned a change the model meant to make into a copy.
        if self.version is not None and self.id is None:
            raise ValueError("a version needs the id of the document it is a version of")
        return self


class AppendArgs(Input):
    stream: str = Field(pattern=STREAM_PATTERN, max_length=MAX_STREAM_CHARS)
    events: list[EventIn] = Field(min_length=1, max_length=100)
    expected_version: ExpectedVersionIn = "any"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    content: str  # what the model reads

    def as_event(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.content}


@dataclass
class JobScope:
    """The attempt of a job that tool calls are made for. A retried attempt runs the model
    from the start, and it asks again to create the documents that the earlier attempts
    created: the k-th document an attempt creates is the one the earlier attempts' k-th
    create made (the id of its `document.created` event says so), written again rather
    than made twice."""

    job_id: uuid.UUID
    # The attempt's number: a tool writes only while the attempt still holds the job.
    attempt: int | None = None
    # The job's: the documents' events it writes carry it, as a request's carry its id.
    correlation_id: str | None = None
    created: int = 0  # documents this attempt created so far

    def next_create_key(self) -> uuid.UUID:
        return uuid.uuid5(_CREATES, f"{self.job_id}/{self.created + 1}")


@dataclass(frozen=True)
class Caller:
    """Who a tool acts for: the job's owner (its rights, nothing more), and the attempt."""

    owner_id: uuid.UUID
    job: JobScope | None = None


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[Input]
    handler: Callable[[Session, Caller, Any], Any]

    def spec(self) -> dict[str, Any]:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": schema},
        }


class ToolBox:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        limits: documents.Limits | None = None,
        json_limits: JsonLimits | None = None,
        event_max_data_bytes: int = event_store.MAX_DATA_BYTES,
    ) -> None:
        self._factory = session_factory
        self._limits = limits or documents.Limits()
        # The API's limit on an event's data: an agent appends nothing a client could not.
        self._event_max_data_bytes = event_max_data_bytes
        # The shape a request body may have: what an agent writes, a client reads and may
        # send back as it is (a document's metadata, an event's data).
        self._json_limits = json_limits or JsonLimits()
        self._tools = {
            tool.name: tool
            for tool in (
                Tool(
                    "documents.search",
                    "Full-text search over your documents; returns ids, titles and ranks.",
                    SearchArgs,
                    self._search,
                ),
                Tool("documents.read", "Read a document by id.", ReadArgs, self._read),
                Tool(
                    "documents.write",
                    "Create a document, or replace one by id; returns its id and version.",
                    WriteArgs,
                    self._write,
                ),
                Tool(
                    "events.append",
                    "Append events to one of your event streams.",
                    AppendArgs,
                    self._append,
                ),
            )
        }

    def specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return [self._tools[name].spec() for name in names if name in self._tools]

    def execute(
        self,
        name: str,
        arguments: str,
        *,
        owner_id: uuid.UUID,
        allowed: Collection[str],
        time_left_s: float | None = None,
        arm: Callable[[Callable[[], None] | None], None] | None = None,
        job: JobScope | None = None,
    ) -> Outcome:
        """Run tool `name` if it is one of the agent's (`allowed`): the model may name any
        tool, and every tool used to run whatever the agent was given. `job`: the attempt
        the call is made for, one object for all of its calls."""
        tool = self._tools.get(name) if name in allowed else None
        if tool is None:
            return _failure(f"there is no tool named {name[:200]!r}")
        try:
            parsed = pydantic_core.from_json(arguments or "{}", allow_inf_nan=False)
        except ValueError as error:
            return _failure(f"invalid arguments for {name}: not JSON ({error})")
        problem = unstorable(parsed) or self._shape_problem(parsed)
        if problem is not None:
            return _failure(f"invalid arguments for {name}: {problem}")
        try:
            args = tool.arguments.model_validate(parsed)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in error.errors()[:5]
            )
            return _failure(f"invalid arguments for {name}: {problems}")
        try:
            result = self._run(tool, Caller(owner_id, job), args, time_left_s, arm)
        except ServiceError as error:
            return _failure(error.detail)
        return Outcome(True, _truncate(orjson.dumps(result, default=str).decode()))

    def _shape_problem(self, arguments: Any) -> str | None:
        found = shape_problem(arguments, self._json_limits)
        if found is None:
            return None
        path, detail = found
        return f"{path[:200] or 'arguments'}: {detail}"

    def _run(
        self,
        tool: Tool,
        caller: Caller,
        args: Input,
        time_left_s: float | None,
        arm: Callable[[Callable[[], None] | None], None] | None,
    ) -> Any:
        """The tool in a transaction of its own, which commits. A tool blocked in PostgreSQL
        (a row another writer holds) kept the attempt past its deadline and ended it as
        `internal`, and a cancelled job's write could land long after the job ended; so
        the transaction's statements wait at most `time_left_s` (then fail, and the runner
        finds the attempt timed out), and `arm` is handed the way to cancel the statement
        under way until the transaction has committed (the runner calls it to stop)."""
        with self._factory() as session:
            if time_left_s is not None:
                # A little past the deadline: the attempt's own stop comes first.
                wait_ms = str(int(time_left_s * 1000) + _PAST_THE_DEADLINE_MS)
                session.execute(_BOUND_WAITS, {"ms": wait_ms})
            if arm is not None:
                driver: psycopg.Connection[Any] = session.connection().connection.driver_connection  # type: ignore[assignment]
                arm(driver.cancel_safe)
            try:
                result = tool.handler(session, caller, args)
                _check_still_held(session, caller.job)
                session.commit()
            finally:
                if arm is not None:
                    arm(None)
        return result

    def context_documents(self, owner_id: uuid.UUID, ids: Sequence[Any]) -> str:
        """The documents a job's input names, as context for the model."""
        parts = ["Documents given with this task:"]
        with self._factory() as session:
            for raw in ids:
                try:
                    document = documents.get(
                        session, owner_id=owner_id, document_id=uuid.UUID(str(raw))
                    )
                except (ServiceError, ValueError):
                    parts.append(f"\n## (document {raw} is not available)")
                    continue
                parts.append(f"\n## {document.title} (id {document.id})\n{document.content}")
        return "\n".join(parts)

    # handlers: each acts with the owner's rights and nothing else of the job -------------

    def _search(self, session: Session, caller: Caller, args: SearchArgs) -> Any:
        page = documents.list_page(
            session, owner_id=caller.owner_id, limit=args.limit, cursor=None, q=args.query
        )
        return [{"id": d.id, "title": d.title, "version": d.version} for d in page.items]

    def _read(self, session: Session, caller: Caller, args: ReadArgs) -> Any:
        owner_id = caller.owner_id
        document: Any
        if args.version is not None:
            document = documents.get_version(
                session, owner_id=owner_id, document_id=args.id, version=args.version
            )
        else:
            document = documents.get(session, owner_id=owner_id, document_id=args.id)
        return {
            "id": document.id,
            "title": document.title,
            "content": document.content,
            "content_type": document.content_type,
            "metadata": document.metadata_,
            "version": document.version,
        }

    def _write(self, session: Session, caller: Caller, args: WriteArgs) -> Any:
        fields = args.model_dump(exclude={"id", "version"})
        if args.id is None:
            document = self._create(session, caller, fields)
        else:
            document = documents.update(
                session,
                owner_id=caller.owner_id,
                document_id=args.id,
                fields=fields,
                limits=self._limits,
                condition=VersionCondition.at(args.version),
                correlation_id=_correlation_id(caller),
            )
        return {"id": document.id, "version": document.version}

    def _create(self, session: Session, caller: Caller, fields: dict[str, Any]) -> Document:
        """A new document; in a retried attempt, the one an earlier attempt created at this
        point (`JobScope`), written again, and left as it is when nothing differs."""
        if caller.job is None:
            return documents.create(
                session, owner_id=caller.owner_id, fields=fields, limits=self._limits
            )
        key = caller.job.next_create_key()
        earlier = documents.created_by_event(session, owner_id=caller.owner_id, event_id=key)
        if earlier is None or earlier.deleted_at is not None:
            # Deleted since: made anew, under no key (the key's event is the old one's).
            document = documents.create(
                session,
                owner_id=caller.owner_id,
                fields=fields,
                limits=self._limits,
                event_id=key if earlier is None else None,
                correlation_id=caller.job.correlation_id,
            )
        elif _holds(earlier, fields):
            document = earlier
        else:
            document = documents.update(
                session,
                owner_id=caller.owner_id,
                document_id=earlier.id,
                fields=fields,
                limits=self._limits,
                correlation_id=caller.job.correlation_id,
            )
        caller.job.created += 1
        return document

    def _append(self, session: Session, caller: Caller, args: AppendArgs) -> Any:
        owner_id = caller.owner_id
        if is_reserved_stream(args.stream):
            raise _ToolRefused(f"stream {args.stream!r} is written by the server only")
        result = event_store.append(
            session,
            owner_id=owner_id,
            stream=args.stream,
            events=[NewEvent(e.type, e.data, e.metadata, e.event_id) for e in args.events],
            expected_version=args.expected_version,
            max_data_bytes=self._event_max_data_bytes,
        )
        return {
            "first_version": result.first_version,
            "last_version": result.last_version,
            "positions": result.positions,
        }


def _correlation_id(caller: Caller) -> str | None:
    return caller.job.correlation_id if caller.job is not None else None


def _check_still_held(session: Session, job: JobScope | None) -> None:
    """Refuse, before its commit, the call of an attempt that no longer holds its job (its
    lease ran out and the sweeper queued the job again, or it ended): its writes would land
    beside the next attempt's. The job's row stays locked (FOR SHARE) until the commit, so
    a takeover or an ending waits for the write instead of passing it. Checked after the
    tool's work, not before: a tool waiting for a row of its own would otherwise hold the
    job's row meanwhile, and a cancel (which writes that row) would wait for it."""
    if job is None or job.attempt is None:
        return
    held = session.execute(
        select(Job.id)
        .where(Job.id == job.job_id, Job.attempt == job.attempt, Job.status == "running")
        .with_for_update(read=True)
    ).first()
    if held is None:
        raise _ToolRefused("this attempt no longer holds its job: nothing was done")


class _ToolRefused(ServiceError):
    status = 422


def _holds(document: Document, fields: dict[str, Any]) -> bool:
    """Whether `document` already holds exactly these fields' values."""
    return all(
        same_json(getattr(document, "metadata_" if name == "metadata" else name), value)
        for name, value in fields.items()
    )


def _failure(message: str) -> Outcome:
    return Outcome(False, _truncate(orjson.dumps({"error": message}).decode()))


def _truncate(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"... [truncated {len(text) - MAX_RESULT_CHARS} characters]"
