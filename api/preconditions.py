"""`If-Match` and `If-None-Match` on changes of versioned resources, whose ETag is the quoted
version number."""

from __future__ import annotations

from flask import request
from werkzeug.datastructures import ETags

from services.errors import FieldProblem, InvalidInput
from services.inputs import MAX_VERSION, parse_counter
from services.preconditions import VersionCondition


def version_condition() -> VersionCondition | None:
    """What the client's `If-Match` and `If-None-Match` require of the current version, or
    None when it sent neither. Each takes a list of tags (any one of them matches) or `*`.
    A weak tag counts as its version: a compressing proxy weakens the tags it passes on
    (nginx's gzip does), and the version is the same."""
    if_match = _versions("If-Match", request.if_match)
    if_none_match = _versions("If-None-Match", request.if_none_match)
    if if_match is None and if_none_match is None and not request.if_none_match.star_tag:
        return None
    return VersionCondition(
        any_of=if_match,
        none_of=if_none_match or frozenset(),
        nothing_there=request.if_none_match.star_tag,
    )


def _versions(header: str, tags: ETags) -> frozenset[int] | None:
    """The versions a header lists, or None when it was not sent (or is `*`)."""
    if tags.star_tag or header not in request.headers:
        return None
    versions = {parse_counter(tag, MAX_VERSION) for tag in tags.as_set(include_weak=True)}
    if not versions or None in versions:  # an empty header, or a tag we never made
        raise InvalidInput(
            problems=[FieldProblem(header, "expected an ETag this API returned", "header")]
        )
    return frozenset(v for v in versions if v is not None)
