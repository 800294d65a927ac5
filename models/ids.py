"""UUIDv7 identifiers: random enough to be unguessable, ordered by creation time.

Time order lets lists page by id alone (`WHERE id < :cursor ORDER BY id DESC`) and keeps
B-tree inserts at the right edge of the index.
"""

import os
import time
import uuid


def new_id() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits."""
    return uuid.UUID(int=_new_id_int())


def new_id_text() -> str:
    """`str(new_id())`, without the UUID object: a batch of a thousand events needs a
    thousand ids only as text, and the object and its printing were most of their cost."""
    digits = f"{_new_id_int():032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _new_id_int() -> int:
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # variant 10xx
    return value
