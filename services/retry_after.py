"""`Retry-After` (RFC 9110, section 10.2.3), as the webhook sender and the LLM client read
it from the servers they call: a number of seconds or an HTTP date.

One reader for both, strict about what a number is: `float` also takes "nan", "inf" and
"1e999", and `str.isdigit` takes "²", and each of those reached a computation that raised
(a job left `running` with no outcome; a webhook attempt that raised on every try).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time

_SECONDS = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")  # ASCII only: re's [0-9], not \d


def seconds(value: str | None) -> float | None:
    """How long the server asks us to wait, from now: 0 or more seconds; None when it
    said nothing readable. Callers cap it as their policy says."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about the local zone
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())
