"""Additions to the generated OpenAPI document: who may call what, and what errors look like.

APIFlask describes errors as its own `application/json` shapes; every error this API sends
is an RFC 9457 problem document (api/problems.py), so each 4xx/5xx response is rewritten
to that, and the statuses any operation of a kind can answer are added to it.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from api.auth import API_KEY_HEADER

SECURITY_SCHEMES = {
    "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
}
# Either credential, unless a route names one with `@bp.doc(security="BearerAuth")`.
DEFAULT_SECURITY = [{"BearerAuth": []}, {"ApiKeyAuth": []}]
_CONVERTER = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "`/problems/<slug>`"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["location", "field", "detail"],
                "properties": {
                    "location": {"type": "string", "enum": ["body", "query", "header", "path"]},
                    "field": {"type": "string"},
                    "detail": {"type": "string"},
                },
            },
        },
    },
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_TITLES = {
    "400": "The body is not valid JSON",
    "401": "No valid credential",
    "413": "The body is too large",
    "415": "The body is not JSON",
    "422": "Invalid input",
    "429": "Too many requests; see Retry-After",
    "503": "A dependency is unavailable; see Retry-After",
}


def describe_security(spec: dict[str, Any], app: Flask) -> dict[str, Any]:
    """Every `/v1` operation needs a credential unless its route says `security=[]`; the
    operational endpoints outside `/v1` (health, metrics, the docs) need none. Errors are
    problem documents."""
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    spec["security"] = DEFAULT_SECURITY
    public = {
        (_openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if not rule.rule.startswith("/v1/")
        or getattr(app.view_functions[rule.endpoint], "_spec", {}).get("security") == []
    }
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPError", "ValidationError"):  # APIFlask's shapes, never sent
        schemas.pop(name, None)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method) in public:
                # APIFlask drops an empty `security`, which would leave the global one.
                operation["security"] = []
            _describe_problems(path, operation, secured=(path, method) not in public)
    return spec


def _describe_problems(path: str, operation: dict[str, Any], *, secured: bool) -> None:
    responses = operation.setdefault("responses", {})
    common = []
    if path.startswith("/v1/"):
        common += ["429", "503"]
    if secured:
        common.append("401")
    if "requestBody" in operation:
        # A route with a body schema validates it whole: leaving it out is a 400 (not JSON).
        operation["requestBody"]["required"] = True
        common += ["400", "413", "415", "422"]
    if operation.get("parameters"):
        common.append("422")
    for status in common:
        responses.setdefault(status, {"description": _TITLES[status]})
    for status, response in responses.items():
        if status[0] in "45":
            response["content"] = {"application/problem+json": {"schema": _PROBLEM_REF}}


def _openapi_path(rule: str) -> str:
    """`/v1/jobs/<uuid:job_id>` -> `/v1/jobs/{job_id}`"""
    return _CONVERTER.sub(r"{\1}", rule)
