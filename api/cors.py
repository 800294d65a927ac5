"""CORS for the origins in CORS_ORIGINS, written here in ~50 lines rather than by flask-cors.

Clients authenticate with `Authorization` or `X-API-Key` headers, never cookies, so no
answer says `Access-Control-Allow-Credentials`: a wildcard origin (development only, see
settings.py) can therefore never be combined with credentials. Preflights are answered
before authentication and rate limits, since browsers send them without credentials.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask, Response, request

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOWED_HEADERS = (
    "Authorization, Content-Type, X-API-Key, Idempotency-Key, If-Match, If-None-Match, "
    "X-Request-ID, Last-Event-ID"
)
EXPOSED_HEADERS = (
    "ETag, Location, Retry-After, X-Request-ID, Idempotent-Replayed, "
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit-Policy, WWW-Authenticate"
)
PREFLIGHT_MAX_AGE_S = 600


def install(app: Flask, origins: Sequence[str]) -> None:
    """Call before `auth.install` and the rate limiter, so that preflights skip both."""
    allowed = frozenset(origin.rstrip("/") for origin in origins)
    wildcard = "*" in allowed

    def allow_origin() -> str | None:
        origin = request.headers.get("Origin")
        if not origin:
            return None
        if wildcard:
            return "*"
        return origin if origin in allowed else None

    @app.before_request
    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        response = Response(status=204)
        origin = allow_origin()
        if origin is not None:  # an unknown origin gets no grant, and the browser refuses
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        response.vary.add("Origin")
        return response

    @app.after_request
    def _cors_headers(response: Response) -> Response:
        if "Access-Control-Allow-Origin" in response.headers:
            return response  # a preflight, answered above
        origin = allow_origin()
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if allowed and not wildcard:
            response.vary.add("Origin")  # the answer depends on who asks
        return response
