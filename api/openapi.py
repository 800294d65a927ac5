"""Additions to the generated OpenAPI document: who may call what, what errors look like,
and what APIFlask cannot know from the schemas.

APIFlask describes errors as its own `application/json` shapes; every error this API sends
is an RFC 9457 problem document (api/problems.py), so each 4xx/5xx response is rewritten
to that, and the statuses any operation of a kind can answer are added to it. Routes
state what only they know with `@declares` (request headers they read, response headers
they send, a live SSE answer); limits that come from settings are written in here. The
document is checked against the OpenAPI 3.1 schema by tests/api/test_openapi.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from api.auth import API_KEY_HEADER
from api.request_context import optional_body_model
from api.spec_parts import (
    HEADERS,
    PARAMETERS,
    PATH_PARAMETERS,
    PROBLEM_SCHEMA,
    RATE_LIMIT_HEADERS,
    SETTINGS_BYTES,
    SETTINGS_LENGTHS,
    SETTINGS_MAXIMA,
    TITLES,
    UUID_PATH_SCHEMA,
)

SECURITY_SCHEMES = {
    "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
}
# Either credential, unless a route names one with `@bp.doc(security="BearerAuth")`.
DEFAULT_SECURITY = [{"BearerAuth": []}, {"ApiKeyAuth": []}]
_CONVERTER = re.compile(r"<(?:([^<>:]+):)?([^<>]+)>")
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_BODY_METHODS = {"post", "put", "patch"}
# One server-sent event. OpenAPI 3.1 has no way to say "each event is" (3.2's
# `itemSchema`); schemathesis reads the schema of `text/event-stream` so, as 3.2 does.
_EVENT_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "With `Accept: text/event-stream`, a live stream of server-sent "
            "events, each with `id` (the stream's version or the feed's position, for "
            "`Last-Event-ID`), `event` (the event's type) and `data` (the event as JSON, as "
            "in the list). Comment lines keep the connection alive.",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        }
    }
}


@dataclass(frozen=True)
class Declared:
    """What a route reads and sends beyond its schemas (see `declares`)."""

    headers: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    request_headers: tuple[str, ...] = ()
    event_stream: bool = False


def declares(
    *,
    headers: Mapping[int, Iterable[str]] | None = None,
    request_headers: Iterable[str] = (),
    event_stream: bool = False,
) -> Callable[[Any], Any]:
    """Document what a route reads and sends that its schemas do not say: `headers`, the
    response headers it sends, by status (`{201: ["Location", "ETag"]}`, names of
    `spec_parts.HEADERS`, each of which says whether it is always sent); `request_headers`
    it reads (`spec_parts.PARAMETERS`); `event_stream`, a `text/event-stream` answer
    besides JSON. Put it below the route decorator."""
    declared = Declared(
        {status: tuple(names) for status, names in (headers or {}).items()},
        tuple(request_headers),
        event_stream,
    )

    def mark(view: Any) -> Any:
        view._conveyor_declared = declared
        return view

    return mark


def describe(spec: dict[str, Any], app: Flask) -> dict[str, Any]:
    """The whole post-processing: security, problems, declared headers, settings' limits."""
    components = spec.setdefault("components", {})
    components.setdefault("headers", {}).update(HEADERS)
    components.setdefault("parameters", {}).update(PARAMETERS)
    components.setdefault("responses", {}).update(_problem_responses())
    _unique_tags(spec)
    describe_security(spec, app)
    views = {
        (_openapi_path(rule.rule), method.lower()): app.view_functions[rule.endpoint]
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
    }
    converters = {
        _openapi_path(rule.rule): _converters(rule.rule) for rule in app.url_map.iter_rules()
    }
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            view = views.get((path, method))
            optional = optional_body_model(view)
            if optional is not None:
                operation["requestBody"] = _optional_body(spec, optional)
            secured = operation.get("security", spec["security"]) != []
            _describe_problems(path, method, operation, secured=secured)
            _apply_declared(operation, getattr(view, "_conveyor_declared", Declared()))
            _describe_headers(path, operation)
            for parameter in operation.get("parameters", []):
                _json_in_query(parameter)
            _describe_path_parameters(operation, converters.get(path, {}))
    _settings_maxima(spec, app)
    return spec


def describe_security(spec: dict[str, Any], app: Flask) -> dict[str, Any]:
    """Every `/v1` operation needs a credential unless its route says `security=[]`; the
    operational endpoints outside `/v1` (health, metrics, the docs) need none."""
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
    return spec


def _unique_tags(spec: dict[str, Any]) -> None:
    """APIFlask lists a tag once per blueprint: two blueprints with one tag (health and
    metrics, webhooks and deliveries) made the document invalid (tag names are unique)."""
    tags: dict[str, dict[str, Any]] = {}
    for tag in spec.get("tags", []):
        tags.setdefault(tag["name"], {}).update({k: v for k, v in tag.items() if v})
    if "tags" in spec:
        spec["tags"] = list(tags.values())


def _describe_problems(path: str, method: str, operation: dict[str, Any], *, secured: bool) -> None:
    responses = operation.setdefault("responses", {})
    # Any request: gunicorn's 414 and 431 (api/server_worker.py), and a Content-Length past
    # MAX_BODY_BYTES (api/request_context.py).
    common = ["413", "414", "431"]
    if path.startswith("/v1/"):
        common += ["429", "503"]
    if secured:
        common.append("401")
    body = operation.get("requestBody")
    if body is not None:
        # A route with a body schema validates it whole: leaving it out is a 400 (not JSON).
        body.setdefault("required", True)
        common += ["400", "415", "422"]
    elif method in _BODY_METHODS:
        # A route that takes no body refuses one (api/request_context.py).
        common += ["400", "415", "422"]
    if operation.get("parameters"):
        common.append("422")
    for status in common:
        responses.setdefault(status, {"$ref": f"#/components/responses/Problem{status}"})
    for status, response in responses.items():
        if "$ref" in response:
            continue
        if status[0] in "45":
            response["content"] = {"application/problem+json": {"schema": _PROBLEM_REF}}
        if status in ("204", "304"):
            response.pop("content", None)  # no body (APIFlask gave 304 a JSON one)


def _apply_declared(operation: dict[str, Any], declared: Declared) -> None:
    responses = operation["responses"]
    for status, names in declared.headers.items():
        headers = responses[str(status)].setdefault("headers", {})
        for name in names:
            headers[name] = _header_ref(name)
    parameters = operation.setdefault("parameters", [])
    for name in declared.request_headers:
        parameters.append({"$ref": f"#/components/parameters/{name}"})
    if declared.event_stream:
        responses["200"]["content"].update(_EVENT_STREAM)


def _describe_headers(path: str, operation: dict[str, Any]) -> None:
    for status, response in operation["responses"].items():
        if "$ref" not in response:
            headers = response.setdefault("headers", {})
            for name, header in _headers_of(status, v1=path.startswith("/v1/")).items():
                headers.setdefault(name, header)


def _headers_of(status: str, *, v1: bool) -> dict[str, Any]:
    """Headers every answer of a kind carries or may carry: X-Request-ID always;
    RateLimit-* on `/v1` answers past the gate; Retry-After on every 429 and 503;
    WWW-Authenticate on every 401."""
    names = ["X-Request-ID"]
    if v1 and (status[0] == "2" or status == "429"):
        names += RATE_LIMIT_HEADERS
    if status in ("429", "503"):
        names.append("Retry-After")
    if status == "401":
        names.append("WWW-Authenticate")
    return {name: _header_ref(name) for name in names}


def _problem_responses() -> dict[str, Any]:
    """The statuses `_describe_problems` adds, as components to refer to."""
    return {
        f"Problem{status}": {
            "description": title,
            "headers": _headers_of(status, v1=True),
            "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
        }
        for status, title in TITLES.items()
    }


def _header_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _json_in_query(parameter: dict[str, Any]) -> None:
    """A query parameter whose schema is an object is read as JSON text
    (`?metadata={"project":"apollo"}`, api/schemas/documents.py): OpenAPI says that with
    `content`, where `schema` told clients to send `?project=apollo` (form, exploded)."""
    if parameter.get("in") != "query" or "schema" not in parameter:
        return
    schema = parameter["schema"]
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    if len(branches) != 1 or branches[0].get("type") != "object":
        return
    del parameter["schema"]
    if "description" in schema:
        parameter.setdefault("description", schema["description"])
    parameter["content"] = {"application/json": {"schema": branches[0]}}


def _optional_body(spec: dict[str, Any], model: Any) -> dict[str, Any]:
    schemas = spec["components"].setdefault("schemas", {})
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    content = {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
    return {"required": False, "content": {"application/json": content}}


def _settings_maxima(spec: dict[str, Any], app: Flask) -> None:
    """Limits that follow the deployment's settings (the service enforces them: 422, or
    413 for a document's content)."""
    settings = app.extensions["conveyor"].settings
    schemas = spec["components"]["schemas"]
    bounds = [(key, setting, "integer", "maximum") for key, setting in SETTINGS_MAXIMA.items()]
    bounds += [(key, setting, "string", "maxLength") for key, setting in SETTINGS_LENGTHS.items()]
    for (schema_name, prop), setting, kind, keyword in bounds:
        schema = schemas[schema_name]["properties"][prop]
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") == kind:
                branch[keyword] = getattr(settings, setting)
    for (schema_name, prop), (setting, sentence) in SETTINGS_BYTES.items():
        schema = schemas[schema_name]["properties"][prop]
        said = [schema.get("description"), sentence.format(getattr(settings, setting))]
        schema["description"] = " ".join(filter(None, said))


def _openapi_path(rule: str) -> str:
    """`/v1/jobs/<uuid:job_id>` -> `/v1/jobs/{job_id}`"""
    return _CONVERTER.sub(r"{\2}", rule)


def _converters(rule: str) -> dict[str, str]:
    """`/v1/jobs/<uuid:job_id>` -> `{"job_id": "uuid"}`"""
    return {name: converter or "default" for converter, name in _CONVERTER.findall(rule)}


def _describe_path_parameters(operation: dict[str, Any], converters: Mapping[str, str]) -> None:
    """What a path parameter may be, as its route checks it: a UUID where werkzeug's
    converter matches nothing else (404), a stream name as `check_stream` takes it (422)."""
    for parameter in operation.get("parameters", []):
        if parameter.get("in") != "path":
            continue
        name = parameter["name"]
        if converters.get(name) == "uuid":
            parameter["schema"] = dict(UUID_PATH_SCHEMA)
        elif name in PATH_PARAMETERS:
            parameter.update(copy.deepcopy(PATH_PARAMETERS[name]))
