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


def check_without_etag() -> None:
    """`If-Match` and `If-None-Match` on a change of a resource that has no ETag, once it is
    known to exist (RFC 9110 has every origin server evaluate them): no tag the client
    lists can be its tag, so `If-Match` with tags fails, and so does `If-None-Match: *`
    (it exists). They were ignored, which turned a client's conditional change into an
    unconditional one. Call it inside the change's transaction: the 412 rolls it back."""
    condition = version_condition()
    if condition is not None:
        condition.check_unversioned()


def _versions(header: str, tags: ETags) -> frozenset[int] | None:
    """The versions a header lists, or None when it was not sent (or is `*`)."""
    if tags.star_tag or header not in request.headers:
        return None
    # An empty quoted tag (`""`, `W/""`) comes out of werkzeug as None: a 500 until it
    # was read as no version of ours.
    versions = {parse_counter(tag or "", MAX_VERSION) for tag in tags.as_set(include_weak=True)}
    if not versions or None in versions:  # an empty header, or a tag we never made
        raise InvalidInput(
            problems=[FieldProblem(header, "expected an ETag this API returned", "header")]
        )
    return frozenset(v for v in versions if v is not None)
