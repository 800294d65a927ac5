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

_SECONDS = re.compile(r"([0-9]+)(\.[0-9]{1,6})?")  # ASCII only: re's [0-9], not \d
# Longer than any caller waits (a day at most); more digits read as this, not as nothing.
_LONGEST_S = 10.0**9


def seconds(value: str | None) -> float | None:
    """How long the server asks us to wait, from now: 0 or more seconds; None when it
    said nothing readable. Callers cap it as their policy says."""
    if value is None:
        return None
    value = value.strip()
    number = _SECONDS.fullmatch(value)
    if number:
        # Twenty digits asked for longer than the caller's cap, not for the usual schedule.
        return _LONGEST_S if len(number.group(1)) > 9 else float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about the local zone
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())
