"""orjson for every JSON body: several times faster than the standard library."""

from __future__ import annotations

import decimal
import json
import re
from typing import Any

import orjson
from flask.json.provider import JSONProvider

from services.errors import FieldProblem, InvalidInput
from services.inputs import LARGEST_INT, SMALLEST_INT

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class OrjsonProvider(JSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=_default, option=_OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        value = orjson.loads(s)
        refuse_inexact_integers(s)
        return value

    def response(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._prepare_response_obj(args, kwargs)
        body = orjson.dumps(obj, default=_default, option=_OPTIONS)
        return self._app.response_class(body, mimetype="application/json")


# orjson keeps integers from -2**63 to 2**64 - 1 exactly and reads any other as the nearest
# double: 2**64 came back as 1.8446744073709552e+19, and two bodies differing only there
# were the same request to Idempotency-Key. Such a number needs 19 digits at least.
_MAYBE_TOO_LONG = re.compile(r"\d{19}")
# For bytes, the same search without the regex, which tries the pattern at every position:
# 4 ms on a 165 KB batch of a thousand events, a sixth of the request's CPU. Every ASCII
# digit becomes "0" and every other byte " ", and 19 zeros in a row are a plain substring.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_DIGITS = b"0" * 19
INEXACT_DETAIL = (
    "holds an integer outside -2^63 .. 2^64-1, which cannot be kept exactly; send it as a string"
)


def refuse_inexact_integers(s: str | bytes) -> None:
    """422 for a document holding an integer orjson would not keep exactly. Only a document
    with 19 digits in a row (in a number or a string) is read again, by the json module,
    which hands over each integer's text."""
    if isinstance(s, bytes):
        maybe_too_long = _NINETEEN_DIGITS in s.translate(_DIGITS_AS_ZEROS)
    else:
        maybe_too_long = _MAYBE_TOO_LONG.search(s) is not None
    if maybe_too_long:
        json.loads(s, parse_int=_exact_int)


def _exact_int(text: str) -> int:
    if len(text) <= 21:  # 2**64 has 20 digits; a longer text is out of range whatever it is
        value = int(text)
        if SMALLEST_INT <= value <= LARGEST_INT:
            return value
    raise InvalidInput(problems=[FieldProblem("body", INEXACT_DETAIL)])


def dumps_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=_OPTIONS)
