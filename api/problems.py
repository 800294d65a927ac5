"""RFC 9457 problem documents for every error, so clients parse one shape.

A 500 says only that something failed and which request it was; the traceback goes to the
log under the same request id.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from apiflask import APIFlask, HTTPError
from flask import Response, g, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from api.json_limits import NotJson
from api.json_provider import dumps_bytes
from api.request_context import PatchDocument
from services.errors import InvalidInput, Overloaded, ServiceError

PROBLEM_MIMETYPE = "application/problem+json"
log = structlog.get_logger("conveyor.api")

# Titles and type slugs for statuses raised by the framework rather than by our services.
_STATUS_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    408: ("request-timeout", "Request timeout"),
    409: ("conflict", "Conflict"),
    412: ("precondition-failed", "Precondition failed"),
    413: ("payload-too-large", "Payload too large"),
    414: ("uri-too-long", "URI too long"),
    415: ("unsupported-media-type", "Unsupported media type"),
    417: ("expectation-failed", "Expectation failed"),
    422: ("validation-error", "Invalid input"),
    429: ("rate-limited", "Too many requests"),
    431: ("request-header-fields-too-large", "Request header fields too large"),
    500: ("internal-error", "Internal server error"),
    501: ("not-implemented", "Not implemented"),
    503: ("unavailable", "Service unavailable"),
}
UNAVAILABLE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
    DisconnectionError,
)
_LOCATIONS = {"json": "body", "query": "query", "headers": "header", "path": "path"}
# RFC 9110 (11.6.1): a 401 carries at least one challenge. Bearer is the one HTTP scheme
# we take; an API key travels in X-API-Key, which is no HTTP authentication scheme, so it
# is named in the problem's detail, not challenged for (RFC 6750, 3: `error` only when a
# token was presented).
BEARER_CHALLENGE = 'Bearer realm="conveyor"'
INVALID_TOKEN_CHALLENGE = 'Bearer realm="conveyor", error="invalid_token"'  # noqa: S105


def document(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The members every problem document has; `problem` and the server's own 503
    (api/server_worker.py) both start from it."""
    default_slug, default_title = _STATUS_SLUGS.get(status, ("error", "Error"))
    return {
        "type": f"/problems/{slug or default_slug}",
        "title": title or default_title,
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    # Extension members never replace the standard ones: a client reads `status` as the
    # HTTP status (RFC 9457, section 3.1), whatever a service adds beside it.
    body = {
        **(extra or {}),
        **document(status, detail, slug=slug, title=title, request_id=g.get("request_id")),
    }
    if errors is not None:
        body["errors"] = errors
    response = Response(dumps_bytes(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401 and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = _challenge()
    return response


def _challenge() -> str:
    presented = request.headers.get("Authorization", "").partition(" ")[0].lower() == "bearer"
    return INVALID_TOKEN_CHALLENGE if presented else BEARER_CHALLENGE


def install(app: APIFlask) -> None:
    app.error_processor(_from_apiflask_error)

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        headers = {}
        if isinstance(error, Overloaded):
            headers["Retry-After"] = str(error.retry_after_s)
        errors = None
        if isinstance(error, InvalidInput):
            errors = [
                {"location": p.location, "field": p.field, "detail": p.detail}
                for p in error.problems
            ]
        return problem(
            error.status,
            error.detail,
            slug=error.slug,
            title=error.title,
            errors=errors,
            headers=headers,
            extra=error.extra,
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return problem(status, _framework_detail(error), headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            return _http_error(error)
        if isinstance(error, UNAVAILABLE_ERRORS):
            # A dependency is down or restarting: tell the client to come back, not a 500.
            log.warning("request.dependency_unavailable", error=type(error).__name__)
            return problem(
                503,
                "A service this request needs is unavailable; try again shortly.",
                slug="unavailable",
                headers={"Retry-After": "5"},
            )
        log.exception("request.unhandled_error")
        return problem(500, "The server failed to handle this request; it has been logged.")


def _from_apiflask_error(error: HTTPError) -> Response:
    """APIFlask reports schema validation (422) and its own aborts through here."""
    if error.status_code == 422 and isinstance(error.detail, dict) and error.detail:
        errors = [
            _field_error(location, field, message)
            for location, fields in error.detail.items()
            for field, messages in fields.items()
            for message in messages
        ]
        summary = "; ".join(f"{e['field']}: {e['detail']}" for e in errors[:5])
        return problem(422, f"The request is not valid: {summary}", errors=errors)
    status = error.status_code
    detail = error.message if isinstance(error.message, str) else _STATUS_SLUGS[status][1]
    return problem(status, detail, headers=dict(error.headers or {}))


def _field_error(location: str, field: str, detail: str) -> dict[str, str]:
    where = _LOCATIONS.get(location, location)
    # An error of the whole object (a model validator's) comes under marshmallow's name for
    # it, `_schema`; the client is told the location instead, as `optional_body` does.
    field = where if field == "_schema" else field
    return {"location": where, "field": field, "detail": in_our_words(detail)}


# What pydantic puts before the message of a validator of ours: the client reads our words.
_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def in_our_words(detail: str) -> str:
    """A validation message as clients read it (here and from `conveyor create-user`)."""
    return _PYDANTIC_PREFIX.sub("", detail, 1)


def _framework_detail(error: HTTPException) -> str:
    match error.code:
        case 400 if isinstance(error, NotJson):
            return f"The request body is not valid JSON: {error.reason}"
        case 400:
            return "The request body is not valid JSON."
        case 404 if _encoded_slash_in_path():
            return (
                "There is nothing at this URL: a %2F in its path is read as '/', which no "
                "stream name or id holds."
            )
        case 404:
            return "There is nothing at this URL."
        case 405:
            return "This URL does not accept this method."
        case 413:
            return "The request body is larger than this server accepts."
        case 415 if isinstance(error, PatchDocument):
            return (
                f"A body of {request.mimetype} is not applied here: a PATCH replaces the "
                "fields it names, and every body is plain JSON. Send application/json."
            )
        case 415:
            return "Send the body as application/json."
        case 429:
            return f"Too many requests (at most {error.description}); see Retry-After."
        case _:
            return error.description or "The request failed."


def _encoded_slash_in_path() -> bool:
    """Whether the path as sent (gunicorn's and werkzeug's `RAW_URI`) held a `%2F`: it is
    routed as a '/', so a name holding one ("orders/1" sent as `orders%2F1`) met no route."""
    raw = str(request.environ.get("RAW_URI", ""))
    return "%2f" in raw.partition("?")[0].lower()
