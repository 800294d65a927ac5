import os
import threading
import time
import uuid

from models.ids import new_id, new_id_text, random_bytes, random_uuid


def test_new_id_is_uuid7_with_the_current_time():
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after


def test_ids_sort_by_creation_time():
    ids = []
    for _ in range(50):
        ids.append(new_id())
        time.sleep(0.001)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_the_text_form_is_a_canonical_version_7_uuid_in_time_order():
    texts = [new_id_text() for _ in range(1000)]
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lowercase, hyphenated
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    assert len(set(texts)) == len(texts)
    # The first 48 bits are milliseconds: a later id never sorts before an earlier one's.
    assert [t[:13] for t in texts] == sorted(t[:13] for t in texts)


def test_random_bytes_hands_out_each_byte_once_across_blocks():
    # More than one block's worth, in sizes that straddle block ends, plus one request
    # larger than a block: every chunk has the asked length and none repeats.
    sizes = [10, 16, 7, 4000, 90, 5000, *([16] * 600)]
    chunks = [random_bytes(n) for n in sizes]
    assert [len(c) for c in chunks] == sizes
    sixteen = [c for c in chunks if len(c) == 16]
    assert len(set(sixteen)) == len(sixteen)


def test_threads_read_their_own_blocks():
    seen: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        chunks = [random_bytes(16) for _ in range(300)]
        with lock:
            seen.extend(chunks)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(seen) == 8 * 300
    assert len(set(seen)) == len(seen)


def test_a_forked_child_does_not_read_its_parents_unread_bytes():
    random_bytes(16)  # the parent now holds a block with unread bytes
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next bytes and leave at once
        os.close(read_end)
        os.write(write_end, random_bytes(32))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        childs = pipe.read()
    os.waitpid(pid, 0)
    assert len(childs) == 32
    assert childs != random_bytes(32)


def test_random_uuid_is_version_4():
    values = {random_uuid() for _ in range(1000)}
    assert len(values) == 1000
    assert all(v.version == 4 and v.variant == uuid.RFC_4122 for v in values)
