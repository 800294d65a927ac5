"""`If-Match` and `If-None-Match` on changes of versioned resources, whose ETag is the quoted
version number."""

from __future__ import annotations

from flask import Response, request
from werkzeug.datastructures import ETags

from api.representations import etag
from services import preconditions
from services.errors import FieldProblem, InvalidInput
from services.inputs import MAX_VERSION, parse_counter
from services.preconditions import VersionCondition


def version_condition() -> VersionCondition | None:
    """What the client's `If-Match` and `If-None-Match` require of the current version, or
    None when it sent neither. Each takes a list of tags (any one of them matches) or `*`.
    A weak tag counts as its version: a compressing proxy weakens the tags it passes on
    (nginx's gzip does), and the version is the same."""
    headers = request.headers
    if "If-Match" not in headers and "If-None-Match" not in headers:
        return None  # the common case (every plain submit): nothing to parse
    # Either header, sent, is `*`, lists versions, or is a 422 (`_versions`): a condition.
    return VersionCondition(
        any_of=_versions("If-Match", request.if_match),
        none_of=_versions("If-None-Match", request.if_none_match) or frozenset(),
        nothing_there=request.if_none_match.star_tag,
        something_there=request.if_match.star_tag,
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


def check_on_create(collection: str, item: str) -> None:
    """`If-Match` and `If-None-Match` on a POST that makes a resource under an id the server
    chooses. Their target is the collection (RFC 9110, 9.3.3), which exists and has no
    ETag, so they are evaluated as `check_without_etag` does: `If-None-Match: *` ("only if
    nothing is there") and `If-Match` with tags are 412s, before anything is made. They
    were ignored, and a client that meant "create only if absent" got a new resource as if
    its condition had held."""
    condition = version_condition()
    if condition is not None:
        condition.check_unversioned(
            f"the collection {collection} (each POST adds {item} under a new id)"
        )


def read_condition() -> VersionCondition | None:
    """What `If-Match` requires of the version a read would answer with, or None when it
    was not sent or is `*`. A read that fails it is a 412 (RFC 9110, 13.1.1), not the other
    version: it was ignored, and a client that asked for version 3 got version 4 unsaid.
    (`If-None-Match` on a read is a 304, not a 412: the route compares it.)"""
    if_match = _versions("If-Match", request.if_match)
    return None if if_match is None else VersionCondition(any_of=if_match)


def conditional_read(what: str, version: int) -> Response | None:
    """The answer to a read of `what` at `version` that its conditions decide: 412 for an
    `If-Match` the version fails, 304 for an `If-None-Match` it meets; None to answer it.
    (A document's past version's bytes never change, so it is cached as the current one.)"""
    preconditions.check(read_condition(), what, version)
    if request.if_none_match.contains_weak(str(version)):
        return Response(status=304, headers={"ETag": etag(version)})
    return None


def _versions(header: str, tags: ETags) -> frozenset[int] | None:
    """The versions a header lists, or None when it was not sent (or is `*`)."""
    if tags.star_tag or header not in request.headers:
        return None
    # An empty quoted tag (`""`, `W/""`) comes out of werkzeug as None: a 500 until it
    # was read as no version of ours.
    versions = {_version(tag or "") for tag in tags.as_set(include_weak=True)}
    if not versions or None in versions:  # an empty header, or a tag we never made
        raise InvalidInput(
            problems=[FieldProblem(header, "expected an ETag this API returned", "header")]
        )
    return frozenset(v for v in versions if v is not None)


def _version(tag: str) -> int | None:
    """The version a tag names, if it is one we send: `"02"` is not `"2"` (tags compare as
    text), and was taken for it."""
    version = parse_counter(tag, MAX_VERSION)
    return version if version is not None and str(version) == tag else None
