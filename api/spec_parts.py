"""The pieces api/openapi.py adds to the document: the problem schema, the headers the API
reads and sends, titles of the statuses every operation of a kind can answer."""

from __future__ import annotations

from typing import Any

from services.idempotency import MAX_KEY_LENGTH
from services.inputs import (
    MAX_POSITION,
    MAX_STREAM_CHARS,
    MAX_VERSION,
    RESERVED_STREAM_PREFIXES,
    STREAM_PATTERN,
)

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
TITLES = {
    "400": "The body is not valid JSON",
    "401": "No valid credential",
    "413": "The body is larger than MAX_BODY_BYTES",
    "414": "The request line is too long (answered by the server before the application)",
    "415": "The body is not JSON, or is a merge patch or JSON Patch (not applied here)",
    "422": "Invalid input",
    "429": "Too many requests; see Retry-After",
    "431": "A request header is too large (answered by the server before the application)",
    "503": "Overloaded, or a dependency is unavailable; see Retry-After",
}


def _header(description: str, schema: dict[str, Any], *, required: bool) -> dict[str, Any]:
    # `required` lives here, not beside the references to these (OpenAPI allows no sibling
    # but `description` there): a header is listed only where it is always sent, or is
    # optional everywhere.
    return {"description": description, "required": required, "schema": schema}


_STRING = {"type": "string"}
_SECONDS = {"type": "integer", "minimum": 0}
RATE_LIMIT_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": _header(
        "The request's id: the client's `X-Request-ID` when it is 1-128 of `A-Za-z0-9._:-`, "
        "else a new one; it is in the logs and in problem documents.",
        _STRING,
        required=True,
    ),
    "Location": _header("The URL of the resource made or accepted.", _STRING, required=True),
    "ETag": _header(
        'The resource\'s version as an entity tag, `"3"`; send it in `If-Match`.',
        _STRING,
        required=True,
    ),
    "Retry-After": _header("Seconds to wait before trying again.", _SECONDS, required=True),
    "WWW-Authenticate": _header(
        'The challenge: `Bearer realm="conveyor"`, with `error="invalid_token"` when a bearer '
        "token was presented and failed. An API key goes in `X-API-Key` instead.",
        _STRING,
        required=True,
    ),
    "Idempotent-Replayed": _header(
        "`true` when this is the stored answer to an earlier request with the same "
        "`Idempotency-Key`.",
        {"type": "string", "enum": ["true"]},
        required=False,
    ),
    "RateLimit-Limit": _header(
        "Requests allowed per window (a sliding window, `RateLimit-Policy`).",
        {"type": "integer", "minimum": 0},
        required=False,
    ),
    "RateLimit-Remaining": _header(
        "Requests left now: the limit less the sliding window's weighted count.",
        {"type": "integer", "minimum": 0},
        required=False,
    ),
    "RateLimit-Reset": _header(
        "Seconds until all of the limit is there again if nothing more is counted (the end "
        "of the next fixed window: the limits are sliding windows); on a 429, the same as "
        "`Retry-After`, when a request will be allowed.",
        _SECONDS,
        required=False,
    ),
    "RateLimit-Policy": _header(
        "The limit and its window, e.g. `600;w=60`.", _STRING, required=False
    ),
}


def _request_header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }


_CONDITION = (
    'ETags this API sent (`"3"`, or `W/"3"`), a comma-separated list of them, or `*`. A tag '
    "that is no version of ours is a 422 on the header."
)
PARAMETERS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": _request_header(
        "Idempotency-Key",
        "Within 24 h, a retry with the same key and body gets the first answer again and "
        "creates nothing; the same key with another body is a 422.",
        {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[ -~]+$"},
    ),
    "If-Match": _request_header(
        "If-Match", f"Change only at one of these versions (else 412). {_CONDITION}", _STRING
    ),
    "If-None-Match": _request_header(
        "If-None-Match",
        f"Change only at none of these versions (else 412); `*` never. {_CONDITION}",
        _STRING,
    ),
    "If-Match-Create": _request_header(
        "If-Match",
        "Evaluated against the collection, which has no ETag: `*` holds, any tag is a 412. "
        f"{_CONDITION}",
        _STRING,
    ),
    "If-None-Match-Create": _request_header(
        "If-None-Match",
        "Evaluated against the collection, which exists: `*` is a 412 (a new resource gets a "
        f"new id, so there is nothing to create only if absent); tags hold. {_CONDITION}",
        _STRING,
    ),
    "If-Match-Unversioned": _request_header(
        "If-Match",
        "This resource has no ETag, so no tag matches it: any tag is a 412 and nothing "
        f"changes; `*` holds. {_CONDITION}",
        _STRING,
    ),
    "If-None-Match-Unversioned": _request_header(
        "If-None-Match",
        f"This resource has no ETag: `*` is a 412 and nothing changes; tags hold. {_CONDITION}",
        _STRING,
    ),
    "If-Match-Append": _request_header(
        "If-Match",
        "Append only while the stream's ETag (its version, as `GET /v1/streams/<stream>` "
        "sends it) is one of these, else 412; `*` only to a stream that has events. "
        "Checked before `expected_version`; a retry of events appended before (same "
        f"`event_id`s) gets its first answer. {_CONDITION}",
        _STRING,
    ),
    "If-None-Match-Append": _request_header(
        "If-None-Match",
        "Append only while the stream's ETag is none of these, else 412; `*` only to a "
        f"stream that has no event yet (creating it). {_CONDITION}",
        _STRING,
    ),
    "If-Match-Read": _request_header(
        "If-Match",
        f"Answer only if the version answered is one of these ETags, else 412. {_CONDITION}",
        _STRING,
    ),
    "If-None-Match-Read": _request_header(
        "If-None-Match",
        "Answer 304 without a body when the version answered is one of these ETags.",
        _STRING,
    ),
    "Last-Event-ID": _request_header(
        "Last-Event-ID",
        "With `Accept: text/event-stream`: the `id` of the last event received (a stream's "
        f"version, at most {MAX_VERSION}, or the feed's position, at most {MAX_POSITION}); the "
        "stream resumes after it. Anything else is a 422 before the stream starts.",
        _STRING,
    ),
}
# Path parameters the routes check themselves (a 422 naming them), declared as checked:
# APIFlask knows only that they are strings.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "stream": {
        "description": "A stream name: 1 to 200 letters, digits, `.`, `_`, `-` or `:`, not "
        f"only dots. Streams starting with {', '.join(f'`{p}`' for p in RESERVED_STREAM_PREFIXES)} "
        "are the server's: read, never written.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_STREAM_CHARS,
            "pattern": STREAM_PATTERN,
        },
    },
}
# A path parameter of werkzeug's `uuid` converter: the route matches nothing else (a 404).
UUID_PATH_SCHEMA = {"type": "string", "format": "uuid"}

# Properties whose maximum is a setting: (schema, property) -> the Settings field.
# A POST that makes a resource under an id the server chooses evaluates these against the
# collection (api.preconditions.check_on_create).
CREATE_CONDITIONS = ("If-Match-Create", "If-None-Match-Create")
# A change of a resource without an ETag (a webhook endpoint, an API key) evaluates these
# once it has found it (api.preconditions.check_without_etag).
UNVERSIONED_CONDITIONS = ("If-Match-Unversioned", "If-None-Match-Unversioned")

SETTINGS_MAXIMA = {
    ("JobIn", "timeout_s"): "job_max_timeout_s",
    ("JobIn", "queue_timeout_s"): "job_max_queue_timeout_s",
    ("AgentIn", "timeout_s"): "job_max_timeout_s",
    ("AgentPatch", "timeout_s"): "job_max_timeout_s",
}
# Strings whose maximum length is a setting, as SETTINGS_MAXIMA.
SETTINGS_LENGTHS = {
    ("DocumentIn", "title"): "document_max_title_length",
    ("DocumentPatch", "title"): "document_max_title_length",
}
_CONTENT_BYTES = "At most {} bytes as UTF-8 (`DOCUMENT_MAX_CONTENT_BYTES`); more is a 413."
_DOCUMENT_METADATA_BYTES = "At most {} bytes as JSON (`DOCUMENT_MAX_METADATA_BYTES`)."
_EVENT_DATA_BYTES = "At most {} bytes as JSON (`EVENT_MAX_DATA_BYTES`)."
# Sizes in bytes set by a setting, which JSON Schema cannot state (its lengths count
# characters): said in the property's description, `{}` being this deployment's value.
SETTINGS_BYTES = {
    ("DocumentIn", "content"): ("document_max_content_bytes", _CONTENT_BYTES),
    ("DocumentPatch", "content"): ("document_max_content_bytes", _CONTENT_BYTES),
    ("DocumentIn", "metadata"): ("document_max_metadata_bytes", _DOCUMENT_METADATA_BYTES),
    ("DocumentPatch", "metadata"): ("document_max_metadata_bytes", _DOCUMENT_METADATA_BYTES),
    ("AppendIn.EventIn", "data"): ("event_max_data_bytes", _EVENT_DATA_BYTES),
    ("BatchIn.BatchEventIn", "data"): ("event_max_data_bytes", _EVENT_DATA_BYTES),
}
