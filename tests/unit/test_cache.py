"""The versioned cache: exact versions only, never older over newer, bounded by bytes."""

import threading

from services.cache import MAX_ENTRY_SHARE, VersionedCache


def test_serves_only_the_exact_version():
    cache = VersionedCache(1024)
    cache.put("doc", 2, b"two")
    assert cache.get("doc", 2) == b"two"
    assert cache.get("doc", 1) is None
    assert cache.get("doc", 3) is None
    assert cache.get("other", 2) is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.size_bytes) == (1, 3, 1, 3)


def test_an_older_version_never_replaces_a_newer_one():
    cache = VersionedCache(1024)
    cache.put("doc", 3, b"three")
    cache.put("doc", 2, b"two")  # a slow reader that loaded before the write
    assert cache.get("doc", 3) == b"three"
    assert cache.get("doc", 2) is None
    cache.put("doc", 4, b"four")
    assert cache.get("doc", 4) == b"four" and cache.get("doc", 3) is None
    assert cache.stats().entries == 1 and cache.stats().size_bytes == 4


def test_evicts_the_least_recently_used_beyond_its_size():
    cache = VersionedCache(40)  # eight values of five bytes
    for key in "abcdefgh":
        cache.put(key, 1, key.encode() * 5)
    assert cache.get("a", 1) is not None  # now the most recently used
    cache.put("i", 1, b"i" * 5)
    assert cache.get("b", 1) is None
    assert all(cache.get(key, 1) is not None for key in "acdefghi")
    for key in "jklm":
        cache.put(key, 1, key.encode() * 5)
    assert cache.stats().size_bytes == 40 and cache.stats().entries == 8


def test_skips_a_value_too_large_for_its_share():
    cache = VersionedCache(800)
    cache.put("small", 1, b"x" * 10)
    cache.put("big", 1, b"x" * (800 // MAX_ENTRY_SHARE + 1))
    assert cache.get("big", 1) is None
    assert cache.get("small", 1) is not None


def test_discard_and_disabled():
    cache = VersionedCache(1024)
    cache.put("doc", 1, b"one")
    cache.discard("doc")
    cache.discard("never-stored")
    assert cache.get("doc", 1) is None and cache.stats().size_bytes == 0
    off = VersionedCache(0)
    assert not off.enabled
    off.put("doc", 1, b"one")
    assert off.get("doc", 1) is None


def test_threads_keep_the_size_accounting_exact():
    cache = VersionedCache(10_000)

    def work(n: int) -> None:
        for i in range(500):
            cache.put(i % 37, i + n, bytes(i % 50 + 1))
            cache.get(i % 37, i)
            if i % 11 == 0:
                cache.discard(i % 37)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats.size_bytes == sum(len(v) for _, v in cache._entries.values())
    assert stats.size_bytes <= 10_000
