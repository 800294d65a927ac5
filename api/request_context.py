"""Per-request plumbing: request id, access log, content type, and the unit of work.

A request commits once, at its end, when its answer is a success; views never commit.
"""

from __future__ import annotations

import re
import time
from typing import TypeVar

import structlog
from flask import Flask, Request, Response, current_app, g, request
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from werkzeug.exceptions import UnsupportedMediaType

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
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_close_session)


# The hooks below run for every request: each takes the request and `g` out of their
# proxies once (a werkzeug LocalProxy lookup per attribute was a few per cent of a job read).


def _begin() -> None:
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    ctx.started = time.perf_counter()
    incoming = req.headers.get(REQUEST_ID_HEADER, "")
    ctx.request_id = incoming if _VALID_REQUEST_ID.match(incoming) else random_uuid().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
    if req.method in _BODY_METHODS and _has_body(req) and not _is_json(req.mimetype):
        raise UnsupportedMediaType()


def _has_body(req: Request) -> bool:
    return bool(req.content_length) or req.headers.get("Transfer-Encoding") == "chunked"


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
