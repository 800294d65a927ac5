"""An in-process cache of immutable values keyed by (key, version): the read-through cache
of hot documents.

It can never serve a stale version, whichever process wrote last, because a reader asks
PostgreSQL for the current version first (a primary-key lookup that loads neither the
content nor its search vector) and takes cached bytes only when they are of exactly that
version. The bytes of one version never change, so nothing needs to reach other processes
on a write: their entries simply stop matching. A write drops its own process's entry so
memory goes to live versions. Why in process rather than in Redis: docs/DECISIONS.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

# One value may take at most this share of the cache, so a single large document cannot
# push out everything else.
MAX_ENTRY_SHARE = 8


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    size_bytes: int


class VersionedCache:
    """A thread-safe LRU bounded by the total size of its values; one version per key."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self._size = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: Hashable, version: int) -> bytes | None:
        """The value stored for exactly this version of `key`, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != version:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[1]

    def put(self, key: Hashable, version: int, value: bytes) -> None:
        """Store `value` as `key` at `version`, unless a newer version is stored already."""
        if len(value) > self.max_bytes // MAX_ENTRY_SHARE:
            return
        with self._lock:
            current = self._entries.get(key)
            if current is not None:
                if current[0] > version:
                    return
                self._remove(key)
            self._entries[key] = (version, value)
            self._size += len(value)
            while self._size > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def discard(self, key: Hashable) -> None:
        with self._lock:
            if key in self._entries:
                self._remove(key)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._size)

    def _remove(self, key: Hashable) -> None:
        _, value = self._entries.pop(key)
        self._size -= len(value)
