"""Bounds on the shape of JSON request bodies, checked as the body is parsed.

MAX_BODY_BYTES bounds the size (a chunked body too: `refuse_cut_off_body`); this bounds
nesting depth (orjson parses up to 1024 levels but writes back only 254, so a deep body
could be stored and then never be shown again), the length of object keys and of any one
string, and refuses NUL characters (PostgreSQL stores none). The parsed body is walked
only when its raw bytes could break a rule: more brackets than the depth allows, more
bytes than a key may have characters, or an escaped NUL.

The URL is checked too: a NUL in its path or query, and a query parameter given more than
once (every parameter here takes one value; the validators read the first, so
`?status=queued&status=running` listed the queued jobs alone, as if that were the answer).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from services.errors import FieldProblem, InvalidInput
from services.inputs import NUL_DETAIL, JsonLimits, shape_problem

__all__ = ["JsonLimits", "NotJson", "check_shape", "install"]

# What gunicorn raises from a body it cannot read: a malformed chunk, or the client gone.
UNREADABLE_BODY = (ParseException, NoMoreData)
REPEATED_DETAIL = "given more than once; every query parameter takes one value"


def install(app: Flask, limits: JsonLimits) -> None:

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
                    refuse_cut_off_body(self, data)
                except UNREADABLE_BODY:
                    # gunicorn reads a chunked body as the application asks for it, and
                    # raised its parse errors (a chunk without its terminator) here: 500s.
                    raise BadRequest("the request's body is malformed or incomplete") from None
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

        def on_json_loading_failed(self, e: ValueError | None) -> Any:
            if e is None:  # not application/json: Flask's 415
                return super().on_json_loading_failed(e)
            raise NotJson(_not_utf8(self.get_data(cache=True)) or str(e)) from None

    app.request_class = LimitedJsonRequest
    app.before_request(check_url)


class NotJson(BadRequest):
    """A body that is not JSON, with the decoder's reason and place (orjson's message:
    "no low surrogate in string: line 1 column 7 (char 6)"). Every such body was "not
    valid JSON" and nothing more: a lone surrogate escape in one string of a thousand
    events left the client to guess which."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason + (_SURROGATES if "surrogate" in reason else "")


_SURROGATES = " (\\ud800-\\udfff escapes come in pairs, high then low: one alone is no character)"


def _not_utf8(data: bytes) -> str | None:
    """Where `data` stops being UTF-8, or None. orjson says only "str is not valid UTF-8:
    surrogates not allowed" at line 1 column 1 for any such byte, which with the hint above
    told a Latin-1 client about escapes it never sent, at the wrong place."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return (
            f"not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start} "
            f"({error.reason}); JSON is sent as UTF-8"
        )
    return None


def refuse_cut_off_body(req: Request, data: bytes) -> None:
    """413 for a body without Content-Length (chunked) that goes on past MAX_BODY_BYTES.
    Werkzeug reads such a body up to the limit and stops there without a word, so a valid
    JSON document followed by anything was taken; one byte more tells."""
    limit = req.max_content_length
    unbounded = req.content_length is None and limit is not None and len(data) >= limit
    if unbounded and req.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def check_url() -> None:
    """422 for a NUL in the path or the query (it would reach PostgreSQL, which stores
    none), and for a query parameter given more than once. The query is parsed here only
    when its raw bytes could hold either: most requests have none."""
    req = request._get_current_object()  # type: ignore[attr-defined]
    if "\x00" in req.path:
        raise InvalidInput(problems=[FieldProblem("path", NUL_DETAIL, "path")])
    raw = req.query_string
    if b"%00" in raw or b"\x00" in raw:
        for name, value in req.args.items(multi=True):
            if "\x00" in name or "\x00" in value:
                raise InvalidInput(
                    problems=[FieldProblem(name.replace("\x00", ""), NUL_DETAIL, "query")]
                )
    if b"&" in raw:  # a second parameter (werkzeug splits the query on "&" alone)
        repeated = [name for name, values in req.args.lists() if len(values) > 1]
        if repeated:
            raise InvalidInput(
                problems=[FieldProblem(name, REPEATED_DETAIL, "query") for name in repeated]
            )


def check_shape(value: Any, *, raw: bytes, limits: JsonLimits) -> None:
    """`InvalidInput` (422) naming the first place where `value` breaks `limits`
    (`services.inputs.shape_problem`). The parsed body is walked only when its raw bytes
    could break a rule."""
    deep_possible = raw.count(b"[") + raw.count(b"{") > limits.max_depth
    long_possible = len(raw) > min(limits.max_key_chars, limits.max_string_chars)
    # JSON can carry NUL only escaped (a raw control character is not valid JSON).
    nul_possible = b"\\u0000" in raw
    if not (deep_possible or long_possible or nul_possible):
        return
    problem = shape_problem(value, limits)
    if problem is not None:
        _refuse(*problem)


def _refuse(path: str, detail: str) -> None:
    # A path is as long as the body is deep; the client needs its start.
    raise InvalidInput(problems=[FieldProblem(path[:200] or "body", detail)])
