"""UUIDv7 identifiers: random enough to be unguessable, ordered by creation time.

Time order lets lists page by id alone (`WHERE id < :cursor ORDER BY id DESC`) and keeps
B-tree inserts at the right edge of the index.

The random bits come from the kernel (`os.urandom`), a block at a time per thread
(`random_bytes`): each `os.urandom` is a system call that lets go of the GIL, and in a web
process whose threads contend for it, letting go hands it to another thread and costs this
one a wait and a pair of context switches. A submit made five such calls (its job's and its
event's ids, the request id, the task message's two ids); with the block, voluntary
context switches per submit under load went from 29-34 to 24-25 (docs/DECISIONS.md).
"""

import os
import threading
import time
import uuid

# Bytes fetched per system call: a block serves a few hundred ids.
_BLOCK_BYTES = 4096


class _Block(threading.local):
    """This thread's unread kernel randomness; every byte is handed out once."""

    def __init__(self) -> None:
        self.data = b""
        self.read = 0


_block = _Block()


def random_bytes(count: int) -> bytes:
    """`count` bytes from the kernel's CSPRNG, as `os.urandom(count)`, mostly without a
    system call."""
    block = _block
    end = block.read + count
    if end > len(block.data):
        block.data, block.read, end = os.urandom(max(_BLOCK_BYTES, count)), 0, count
    chunk = block.data[block.read : end]
    block.read = end
    return chunk


def _fresh_block_after_fork() -> None:
    # A forked child starts with a copy of its parent's unread bytes (gunicorn's and
    # Celery's workers fork from a process that may have made ids): reading them too
    # would give both processes the same ids.
    global _block
    _block = _Block()


os.register_at_fork(after_in_child=_fresh_block_after_fork)


def new_id() -> uuid.UUID:
    """A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then 74 random bits."""
    return uuid.UUID(int=_new_id_int())


def new_id_text() -> str:
    """`str(new_id())`, without the UUID object: a batch of a thousand events needs a
    thousand ids only as text, and the object and its printing were most of their cost."""
    digits = f"{_new_id_int():032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def random_uuid() -> uuid.UUID:
    """A UUID version 4 (122 random bits), as `uuid.uuid4()`: for ids that need no order
    (request ids, task messages)."""
    return uuid.UUID(bytes=random_bytes(16), version=4)


def _new_id_int() -> int:
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(random_bytes(10), "big")
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # variant 10xx
    return value
