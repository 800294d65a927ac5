"""Per-request plumbing: request id, access log, the body's size and type, and the unit
of work.

A request commits once, at its end, when its answer is a success; views never commit.

A body is checked before anything else runs: past MAX_BODY_BYTES by its Content-Length,
413 on every route; on POST, PUT and PATCH not JSON, 415. A route that takes no body (no
`@bp.input` body, no `takes_optional_body`) reads it here and refuses anything but nothing
or `{}`: not JSON is 400, other JSON 422, so a body sent to the wrong route is never
silently ignored. A chunked body is read up to the limit (413 past it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from flask import Flask, Request, Response, current_app, g, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from api.admission import Admission
from models.db import UnitOfWork
from models.ids import random_uuid
from services.errors import FieldProblem, InvalidInput
from services.log_config import LineLog

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
access_log = LineLog("conveyor.api")
_AUTOCOMMIT = "conveyor.autocommit"
_NO_BODY = "conveyor.endpoints_without_body"
_OPTIONAL_BODY = "_conveyor_optional_body"
NO_BODY_DETAIL = "this operation takes no body: send none, or {}"


def db() -> Session:
    """The request's session, opened on first use."""
    session = g.get("db")
    if session is None:
        session = current_app.extensions["conveyor"].session_factory()
        g.db = session
    elif session.info.get(_AUTOCOMMIT):
        raise RuntimeError("this request chose single_statement_db(); it cannot also need db()")
    return session  # type: ignore[no-any-return]


def single_statement_db() -> UnitOfWork:
    """The unit of work of a request that makes exactly one statement: the statement commits
    by itself, which spares the BEGIN and COMMIT round trips (two of the three of a job
    read), and no ORM session is built (models.db.OneStatement). Deferred work
    (services/after_commit.py) still waits for the request's commit. A request that opened
    `db()` already goes on in its transaction."""
    unit = g.get("db")
    if unit is None:
        unit = current_app.extensions["conveyor"].single_statement()
        unit.info[_AUTOCOMMIT] = True
        g.db = unit
    return unit  # type: ignore[no-any-return]


M = TypeVar("M", bound=BaseModel)


def takes_optional_body(model: type[BaseModel]) -> Callable[[Any], Any]:
    """Mark a view that reads `optional_body(model)`: its body is let through (the view
    validates it) and documented as optional. Put it below the route decorator."""

    def mark(view: Any) -> Any:
        setattr(view, _OPTIONAL_BODY, model)
        return view

    return mark


def optional_body_model(view: Any) -> type[BaseModel] | None:
    model: type[BaseModel] | None = getattr(view, _OPTIONAL_BODY, None)
    return model


def takes_body(view: Any) -> bool:
    """Whether a view reads a body: an `@bp.input` body, or `takes_optional_body`."""
    return "body" in getattr(view, "_spec", {}) or optional_body_model(view) is not None


def optional_body(model: type[M]) -> M:
    """Validate a JSON body that a client may leave out entirely."""
    data = request.get_json() if _has_body(request) else {}
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(
            problems=[
                FieldProblem(".".join(str(p) for p in e["loc"]) or "body", e["msg"])
                for e in error.errors()
            ]
        ) from None


def end_session() -> None:
    """Finish the request's transaction now (commit) and give its connection back, and
    its admission slot: what follows waits on something other than the CPU."""
    Admission.leave()
    session: UnitOfWork | None = g.pop("db", None)
    if session is not None:
        try:
            session.commit()
        finally:
            session.close()


def install(app: Flask) -> None:
    """The per-request hooks. Call `note_routes` once every blueprint is registered."""
    without_body: set[str] = set()  # endpoints of POST/PUT/PATCH routes that take no body
    app.extensions[_NO_BODY] = without_body
    limit: int | None = app.config["MAX_CONTENT_LENGTH"]

    # The hooks below run for every request: each takes the request and `g` out of their
    # proxies once (a werkzeug LocalProxy lookup per attribute was a few per cent of a job
    # read). The body's checks are inline: they run on every submit.
    def _begin() -> None:
        req: Request = request._get_current_object()  # type: ignore[attr-defined]
        ctx = g._get_current_object()  # type: ignore[attr-defined]
        ctx.started = time.perf_counter()
        incoming = req.headers.get(REQUEST_ID_HEADER, "")
        ctx.request_id = incoming if _VALID_REQUEST_ID.match(incoming) else random_uuid().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
        if req.method in _BODY_METHODS:
            length = req.content_length  # None when chunked
            if not length and req.headers.get("Transfer-Encoding") != "chunked":
                return  # no body
            # Werkzeug refuses this only when a view reads the body, and a route that takes
            # none never did: a 3 MB body to rotate-secret rotated the secret.
            if length and limit is not None and length > limit:
                raise RequestEntityTooLarge()
            if req.mimetype in PATCH_FORMATS:
                raise PatchDocument()
            if not _is_json(req.mimetype):
                raise UnsupportedMediaType()
            rule = req.url_rule
            if rule is not None and rule.endpoint in without_body:
                _refuse_unwanted_body(req)
        elif req.environ.get("CONTENT_LENGTH"):  # a GET or DELETE with a body: not read
            length = req.content_length
            if length and limit is not None and length > limit:
                raise RequestEntityTooLarge()

    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_close_session)


def note_routes(app: Flask) -> None:
    """Learn which POST/PUT/PATCH routes take no body; call after registering blueprints."""
    without_body: set[str] = app.extensions[_NO_BODY]
    without_body.clear()
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if (rule.methods or set()) & _BODY_METHODS and not takes_body(view):
            without_body.add(rule.endpoint)


def _refuse_unwanted_body(req: Request) -> None:
    """A route that takes no body accepts an empty one or `{}` (what many clients send by
    default); anything else is refused, so that nothing is done on a misdirected body.
    `get_data` is 413 past the limit (chunked) and `get_json` 400 on what is not JSON."""
    if not req.get_data(cache=True).strip():
        return
    if req.get_json() != {}:
        raise InvalidInput(problems=[FieldProblem("body", NO_BODY_DETAIL)])


def _has_body(req: Request) -> bool:
    return bool(req.content_length) or req.headers.get("Transfer-Encoding") == "chunked"


# JSON documents that describe a change (RFC 7396's merge patch, RFC 6902's JSON Patch): both
# are `+json`, and were read as plain JSON, so a merge patch's null ("remove this key") was
# stored as a null. No route applies them: a PATCH here replaces the fields it names.
PATCH_FORMATS = frozenset({"application/merge-patch+json", "application/json-patch+json"})


class PatchDocument(UnsupportedMediaType):
    """A body in one of PATCH_FORMATS: 415, with `Accept-Patch` on a PATCH (RFC 5789)."""

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        headers = super().get_headers(*args, **kwargs)
        if request.method == "PATCH":
            headers.append(("Accept-Patch", "application/json"))
        return headers


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def _finish(response: Response) -> Response:
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    session: UnitOfWork | None = ctx.pop("db", None)
    if session is not None:
        try:
            if response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        finally:
            session.close()
    response.headers.add(REQUEST_ID_HEADER, ctx.get("request_id", ""))  # set nowhere else
    if response.status_code in (204, 304):
        # No body, so no type: Flask gives `return "", 204` its default, text/html.
        response.headers.pop("Content-Type", None)
    now = time.perf_counter()
    access_log.info(
        "request",
        method=req.method,
        path=req.path,
        status=response.status_code,
        duration_ms=round((now - ctx.get("started", now)) * 1000, 2),
    )
    return response


def _close_session(_: BaseException | None) -> None:
    # Reached with a session still open only when the request failed before after_request.
    session: UnitOfWork | None = g.pop("db", None)
    if session is not None:
        session.rollback()
        session.close()
