"""Stream names in requests: a path's or a batch event's, for reading or for writing."""

from __future__ import annotations

import re

from services.errors import FieldProblem, InvalidInput
from services.inputs import (
    MAX_STREAM_CHARS,
    RESERVED_STREAM_PREFIXES,
    STREAM_PATTERN,
    is_reserved_stream,
)

_STREAM = re.compile(STREAM_PATTERN)


def check_stream(stream: str, *, writing: bool) -> None:
    """The path's stream name, for reading it or writing to it."""
    problem = stream_problem(stream, writing=writing, field="stream", location="path")
    if problem:
        raise InvalidInput(problems=[problem])


def stream_problem(
    stream: str, *, writing: bool, field: str, location: str = "body"
) -> FieldProblem | None:
    if len(stream) > MAX_STREAM_CHARS or not _STREAM.fullmatch(stream):
        return FieldProblem(
            field, "1 to 200 letters, digits, '.', '_', '-' or ':', not only dots", location
        )
    if writing and is_reserved_stream(stream):
        return FieldProblem(
            field,
            f"streams starting with {', '.join(RESERVED_STREAM_PREFIXES)} "
            "are written by the server only",
            location,
        )
    return None
