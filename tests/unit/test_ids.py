import time
import uuid

from models.ids import new_id


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
