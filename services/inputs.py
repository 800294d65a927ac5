"""Input models shared by the HTTP API and the agents' tools, so both accept exactly the
same things. Unknown fields are an error, never ignored."""

from __future__ import annotations

import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

MAX_METADATA_BYTES = 16 * 1024
# 1 to 200 of these characters (MAX_STREAM_CHARS, checked beside the pattern), not only dots:
# clients and proxies resolve `/v1/streams/../events` to `/v1/events` before sending it.
STREAM_PATTERN = r"^[A-Za-z0-9._:\-]*[A-Za-z0-9_:\-][A-Za-z0-9._:\-]*$"
MAX_STREAM_CHARS = 200
TYPE_PATTERN = r"^[A-Za-z0-9._:\-/]{1,200}$"
MAX_APPEND = 1000
# Streams the server writes itself: clients and agents read them but cannot forge events.
RESERVED_STREAM_PREFIXES = ("job-", "document-")
# The largest numbers the columns hold: versions (of streams, documents and agents) are
# PostgreSQL integers, feed positions bigints. A larger number names nothing stored; as a
# statement's parameter it would fail the statement, so it is refused as input instead.
MAX_VERSION = 2**31 - 1
MAX_POSITION = 2**63 - 1


class Input(BaseModel):
    """Base of every request body, query and tool argument object.

    A request body's integers and booleans are declared `StrictInt` and `StrictBool`: JSON
    has numbers and booleans of its own, so `true` or "5" for a count is a client's
    mistake, which lax coercion would hide (and turn into 1 or 5). Queries stay lax, since
    every value arrives as text there, and so do tool arguments: models write "5" for 5
    often enough that refusing it would only cost a step."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


# The integers JSON here (orjson) keeps exactly.
SMALLEST_INT, LARGEST_INT = -(2**63), 2**64 - 1


def unstorable(value: Any) -> str | None:
    """What in a parsed JSON value could not be stored as it is, said for its sender, or
    None: a NUL character (PostgreSQL stores none), an integer beyond 64 bits or a number
    beyond a double (orjson writes neither). The API refuses these as it parses a body;
    a model's tool arguments come here."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return "a string holds a NUL character (\\u0000), which cannot be stored"
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int):
            if not SMALLEST_INT <= node <= LARGEST_INT:
                return "an integer is outside -2^63 .. 2^64-1 and cannot be kept exactly"
        elif isinstance(node, float):
            if not math.isfinite(node):
                return "a number is too large to keep"
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values. Python's `==` takes `true` for 1 and `false` for 0 (a bool is
    an int), which JSON does not: a retry that sent `true` for `1` was taken for what was
    stored (an event, a document an earlier attempt wrote) and dropped unsaid. Numbers
    compare by value (`1.0` is `1`), as PostgreSQL's jsonb equality has them."""
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(same_json(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_json, a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


# PostgreSQL stores no NUL, and JSON (orjson) no lone surrogate.
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with what cannot be stored (NUL, lone surrogates) replaced by U+FFFD: for text
    of others that we keep as it came (a model's answer, a receiver's reply)."""
    return _UNSTORABLE_CHARACTERS.sub("\ufffd", text)


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    return value


SMALL_OBJECT = f"a JSON object of at most {MAX_METADATA_BYTES} bytes as JSON"
# The bound in the description too: JSON Schema has no size of a whole value.
SmallObject = Annotated[
    dict[str, Any], Field(description=SMALL_OBJECT), AfterValidator(_small_json)
]


class EventIn(Input):
    type: str = Field(pattern=TYPE_PATTERN)
    data: dict[str, Any]  # its limit is the deployment's (EVENT_MAX_DATA_BYTES)
    metadata: SmallObject = Field(
        default_factory=dict, description=f"At most {MAX_METADATA_BYTES} bytes as JSON."
    )
    event_id: uuid.UUID | None = None


# C0 (tab and line breaks too), DEL, C1 and Unicode's line and paragraph separators. A
# title is one line: lists show it, terminals run its escape sequences, and a model's
# context puts it in a heading.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _one_line(title: str) -> str:
    if _CONTROL_CHARACTERS.search(title):
        raise ValueError(
            "must be one line without control characters (line breaks, tabs, U+0000-U+001F, "
            "U+007F-U+009F, U+2028, U+2029)"
        )
    if all(character.isspace() or unicodedata.category(character) == "Cf" for character in title):
        # Format characters (zero-width space, BOM, soft hyphen, direction marks) show
        # nothing: such a title was listed as an empty one.
        raise ValueError("must not be only whitespace or invisible format characters")
    return title


# A document's title; its length limit is the deployment's (DOCUMENT_MAX_TITLE_LENGTH).
Title = Annotated[str, Field(min_length=1), AfterValidator(_one_line)]
# Bidirectional embeddings, overrides and isolates reorder what follows them where a name
# is shown ("invoice\u202egpj.exe" reads "invoiceexe.jpg"); a zero-width space or no-break
# space shows as nothing. The marks (U+200E, U+200F) and joiners (U+200C, U+200D) that
# right-to-left scripts, Indic scripts and emoji need stay allowed.
_INVISIBLE_REORDERING = re.compile("[\u200b\u202a-\u202e\u2066-\u2069\ufeff]")


def _refusing(characters: re.Pattern[str], message: str) -> Callable[[str], str]:
    """A validator that refuses a string holding any of `characters`, saying `message`."""

    def check(text: str) -> str:
        if characters.search(text):
            raise ValueError(message)
        return text

    return check


_shown_as_written = _refusing(
    _INVISIBLE_REORDERING,
    "must hold no bidirectional override or isolate (U+202A-U+202E, U+2066-U+2069) "
    "and no zero-width space (U+200B, U+FEFF)",
)


# A name the client gives what it makes (an agent, an API key): one line, as a title is,
# and read as it is shown.
Name = Annotated[
    str,
    Field(min_length=1, max_length=200),
    AfterValidator(_one_line),
    AfterValidator(_shown_as_written),
]
# Everything `_CONTROL_CHARACTERS` refuses but the line breaks and the tab a note may hold.
_CONTROL_CHARACTERS_BUT_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


_printable = _refusing(
    _CONTROL_CHARACTERS_BUT_LINES,
    "must hold no control characters but line breaks and tabs (U+0000-U+001F, U+007F-U+009F)",
)


# Free text a client writes for people to read (a webhook endpoint's description, why it
# was disabled): lines and tabs, but no escape sequences for the terminals that show it.
Note = Annotated[
    str,
    Field(max_length=500, description="Free text; no control characters but line breaks and tabs."),
    AfterValidator(_printable),
]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]
# A document's content type: type "/" subtype, then parameters (text/markdown,
# application/json, text/plain; charset=utf-8). One definition for the API and the tools.
# ASCII only, as media types are: `\w` and `\s` are Unicode on the server and ASCII in the
# OpenAPI document (ECMA-262), and `.` let terminal escapes into the parameters.
_MEDIA_TYPE_CHAR = r"[A-Za-z0-9_!#$&^.+-]"
ContentType = Annotated[
    str,
    Field(
        max_length=200,
        pattern=rf"^[A-Za-z0-9]{_MEDIA_TYPE_CHAR}*/{_MEDIA_TYPE_CHAR}+([ \t]*;[\t -~]*)?$",
    ),
]
# Strict: `true`, "1" and 1.0 were read as version 1, and an append meant for a new stream
# could land on one at version 1.
ExpectedVersionIn = Annotated[StrictInt, Field(ge=0, le=MAX_VERSION)] | Literal["any", "no_stream"]


@dataclass(frozen=True)
class JsonLimits:
    """The shape a JSON value we store may have (JSON_MAX_* settings): a request body's, as
    it is parsed (api/json_limits.py), and an agent's tool arguments."""

    max_depth: int = 32
    max_key_chars: int = 1024
    max_string_chars: int = 2 * 1024 * 1024


NUL_DETAIL = "contains a NUL character (\\u0000), which cannot be stored"


def shape_problem(value: Any, limits: JsonLimits) -> tuple[str, str] | None:
    """The first place (a dotted path, "" for the value itself) where `value` nests deeper
    than `limits` allow, holds a key or string longer than allowed, or a NUL character
    (PostgreSQL stores none, in text or in jsonb), with what is wrong there; or None."""
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
            return path, f"nests deeper than {limits.max_depth} levels of objects and arrays"
        for key, child in items:
            if isinstance(key, str):
                if len(key) > limits.max_key_chars:
                    return path, f"has a key longer than {limits.max_key_chars} characters"
                if "\x00" in key:
                    return path, NUL_DETAIL
            if isinstance(child, str):
                if len(child) > limits.max_string_chars:
                    return _join(path, key), f"is longer than {limits.max_string_chars} characters"
                if "\x00" in child:
                    return _join(path, key), NUL_DETAIL
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1, _join(path, key)))
    if isinstance(value, str) and (len(value) > limits.max_string_chars or "\x00" in value):
        return "", "is not a JSON object"
    return None


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


def parse_counter(text: str, maximum: int) -> int | None:
    """`text` as a number of ASCII digits from 0 to `maximum`, else None. Headers and
    cursors come as text; `str.isdigit` also says yes to "²" and to 5,000 digits, both of
    which `int` then refuses with a ValueError."""
    if not (0 < len(text) <= len(str(maximum)) and text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= maximum else None


def is_reserved_stream(stream: str) -> bool:
    return stream.startswith(RESERVED_STREAM_PREFIXES)
