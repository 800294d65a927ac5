"""`If-Match` for versioned resources, whose ETag is the quoted version number."""

from __future__ import annotations

from flask import request

from services.errors import FieldProblem, InvalidInput
from services.inputs import MAX_VERSION, parse_counter


def if_match_version() -> int | None:
    """The version the client says it is changing, or None when it sent no If-Match (or *)."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    tag = header.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    version = parse_counter(tag.strip('"'), MAX_VERSION)
    if version is None:
        raise InvalidInput(
            problems=[FieldProblem("If-Match", "expected an ETag this API returned", "header")]
        )
    return version
