"""Domain errors. The HTTP adapter turns each into a problem document; tasks classify them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

E = TypeVar("E", bound=BaseException)


@dataclass
class FieldProblem:
    field: str
    detail: str
    location: str = "body"


class ServiceError(Exception):
    """Base of every error a client may see. `detail` must be safe to show to that client."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


class NotFound(ServiceError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ServiceError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class PreconditionFailed(ServiceError):
    status = 412
    slug = "precondition-failed"
    title = "Precondition failed"


class Unauthorized(ServiceError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(ServiceError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class Overloaded(ServiceError):
    status = 503
    slug = "overloaded"
    title = "Service overloaded"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(Overloaded):
    """503 because a service the request needs (Redis, PostgreSQL) does not answer; the
    same answer as for the driver errors `api/problems.py` maps, not "overloaded"."""

    slug = "unavailable"
    title = "Service unavailable"


@dataclass
class InvalidInput(ServiceError):
    """Input that passed the schema but breaks a rule only the domain knows."""

    problems: list[FieldProblem] = field(default_factory=list)

    status = 422
    slug = "validation-error"
    title = "Invalid input"

    def __post_init__(self) -> None:
        detail = "; ".join(f"{p.field}: {p.detail}" for p in self.problems)
        ServiceError.__init__(self, detail)


def in_chain(error: BaseException, kinds: type[E] | tuple[type[E], ...]) -> E | None:
    """The first of `kinds` among `error` and what it was raised from or during (its
    `__cause__`, else its `__context__`), or None: what a library raised while handling
    ours (a rollback that failed, a wrapper of its own) hides it from a plain `except`."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain can be made circular by hand
        if seen is None:
            return None
        if isinstance(seen, kinds):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
