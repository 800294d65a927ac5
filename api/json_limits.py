"""Bounds on the shape of JSON request bodies, checked as the body is parsed.

MAX_BODY_BYTES bounds the size (a chunked body too: `refuse_cut_off_body`); this bounds
nesting depth (orjson parses up to 1024 levels but writes back only 254, so a deep body
could be stored and then never be shown again), the length of object keys and of any one
string, and refuses NUL characters (PostgreSQL stores none). The parsed body is walked
only when its raw bytes could break a rule: more brackets than the depth allows, more
bytes than a key may have characters, or an escaped NUL. A NUL in the URL's path or query
is refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from services.errors import FieldProblem, InvalidInput

# What gunicorn raises from a body it cannot read: a malformed chunk, or the client gone.
UNREADABLE_BODY = (ParseException, NoMoreData)
NUL_DETAIL = "contains a NUL character (\\u0000), which cannot be stored"


@dataclass(frozen=True)
class JsonLimits:
    max_depth: int
    max_key_chars: int
    max_string_chars: int


def install(app: Flask, *, max_depth: int, max_key_chars: int, max_string_chars: int) -> None:
    limits = JsonLimits(max_depth, max_key_chars, max_string_chars)

    class LimitedJsonRequest(Request):
        _json_checked = False
        _length_checked = False

        def get_data(  # type: ignore[override]
            self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
        ) -> bytes | str:
            if not self._length_checked:
                self._length_checked = True
                try:
                    data = super().get_data(cache=True)
                except UNREADABLE_BODY:
                    # gunicorn reads a chunked body as the application asks for it, and
                    # raised its parse errors (a chunk without its terminator) here: 500s.
                    raise BadRequest("the request's body is malformed or incomplete") from None
                refuse_cut_off_body(self, data)
            return super().get_data(cache, as_text, parse_form_data)

        def get_json(
            self, force: bool = False, silent: bool = False, cache: bool = True
        ) -> Any | None:
            value = super().get_json(force=force, silent=silent, cache=cache)
            # A silent read (a rate-limit key looking for the email) only peeks; the first
            # real read checks, and so does every read after a failed check.
            if not silent and not self._json_checked:
                check_shape(value, raw=self.get_data(cache=True), limits=limits)
                self._json_checked = True
            return value

    app.request_class = LimitedJsonRequest
    app.before_request(refuse_nul_in_url)


def refuse_cut_off_body(req: Request, data: bytes) -> None:
    """413 for a body without Content-Length (chunked) that goes on past MAX_BODY_BYTES.
    Werkzeug reads such a body up to the limit and stops there without a word, so a valid
    JSON document followed by anything was taken; one byte more tells."""
    limit = req.max_content_length
    unbounded = req.content_length is None and limit is not None and len(data) >= limit
    if unbounded and req.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def refuse_nul_in_url() -> None:
    """A NUL in the path or the query would reach PostgreSQL, which stores none: 422 now."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    if "\x00" in req.path:
        raise InvalidInput(problems=[FieldProblem("path", NUL_DETAIL, "path")])
    raw = req.query_string
    if b"%00" not in raw and b"\x00" not in raw:
        return  # a NUL arrives in a query only so: no need to parse it here
    for name, value in req.args.items(multi=True):
        if "\x00" in name or "\x00" in value:
            raise InvalidInput(
                problems=[FieldProblem(name.replace("\x00", ""), NUL_DETAIL, "query")]
            )


def check_shape(value: Any, *, raw: bytes, limits: JsonLimits) -> None:
    """`InvalidInput` (422) naming the first place where `value` nests deeper than allowed,
    holds a key or string longer than allowed, or a NUL character (PostgreSQL stores none,
    in text or in jsonb, and would fail the request late, as a 500)."""
    deep_possible = raw.count(b"[") + raw.count(b"{") > limits.max_depth
    long_possible = len(raw) > min(limits.max_key_chars, limits.max_string_chars)
    # JSON can carry NUL only escaped (a raw control character is not valid JSON).
    nul_possible = b"\\u0000" in raw
    if not (deep_possible or long_possible or nul_possible):
        return
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        if depth > limits.max_depth:
            _refuse(path, f"nests deeper than {limits.max_depth} levels of objects and arrays")
        for key, child in items:
            if isinstance(key, str):
                if len(key) > limits.max_key_chars:
                    _refuse(path, f"has a key longer than {limits.max_key_chars} characters")
                if nul_possible and "\x00" in key:
                    _refuse(path, NUL_DETAIL)
            if isinstance(child, str):
                if len(child) > limits.max_string_chars:
                    _refuse(
                        _join(path, key), f"is longer than {limits.max_string_chars} characters"
                    )
                if nul_possible and "\x00" in child:
                    _refuse(_join(path, key), NUL_DETAIL)
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1, _join(path, key)))
    if isinstance(value, str) and (len(value) > limits.max_string_chars or "\x00" in value):
        _refuse("", "is not a JSON object")


def nesting_depth(value: Any) -> int:
    """Levels of objects and arrays in `value` (a scalar: 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _refuse(path: str, detail: str) -> None:
    # A path is as long as the body is deep; the client needs its start.
    raise InvalidInput(problems=[FieldProblem(path[:200] or "body", detail)])
