"""Give the heap that a burst of large answers freed back to the system.

glibc keeps the memory a process frees for its own reuse: it returns only the top of a
heap, and only once nothing is allocated above it. A web process that served a burst of
large answers at once stays that much bigger when the burst is over. A churn probe
(2026-11-28): 36 live tails of a stream of 60 KB events that their
clients never read, 18 per process, each holding a 4 MB page; once they had gone, each
process stayed 60-100 MB above its baseline (web PSS 208 -> 336 MB, 365 after a second
round: with the worker's 190 MB, past the 512 MB budget, idle), and `malloc_trim(0)`
brought both back to within 7 MB.

The gunicorn worker's main loop (`api/server_worker.py`) calls `maybe` about once a
second. Every `every_s` it reads how many bytes the allocator holds free (`mallinfo2`,
microseconds); when that has grown by `freed_bytes` since its lowest reading after the
last trim, it calls `malloc_trim(0)`, which hands back the whole pages of free chunks
(about 11 ms for 165 MB). The free bytes are still counted after a trim (the chunks stay
the allocator's, their pages given back), hence the growth rather than the amount. Other
C libraries (musl, macOS) have neither function: then nothing is trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


class MemoryTrim:
    def __init__(self, *, freed_bytes: int, every_s: float) -> None:
        self.freed_bytes = freed_bytes
        self.every_s = every_s
        self._next_at = 0.0
        self._lowest: int | None = None
        self._free, self._trim = _glibc()

    def maybe(self) -> int | None:
        """Trim when enough was freed since the last trim: the free bytes seen then, or
        None when it did not trim."""
        if self._free is None or self._trim is None:
            return None
        now = time.monotonic()
        if now < self._next_at:
            return None
        self._next_at = now + self.every_s
        free = self._free()
        if self._lowest is None or free < self._lowest:
            self._lowest = free
        if free - self._lowest < self.freed_bytes:
            return None
        self._trim(0)
        self._lowest = self._free()
        return free


def _glibc() -> tuple[Callable[[], int] | None, Callable[[int], int] | None]:
    name = ctypes.util.find_library("c")
    if not name:
        return None, None
    libc = ctypes.CDLL(name)
    mallinfo2 = getattr(libc, "mallinfo2", None)  # glibc 2.33+
    malloc_trim = getattr(libc, "malloc_trim", None)
    if mallinfo2 is None or malloc_trim is None:
        return None, None
    mallinfo2.restype = _MallInfo2
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return (lambda: int(mallinfo2().fordblks)), malloc_trim
