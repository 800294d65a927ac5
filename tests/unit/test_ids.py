import time
import uuid

from models.ids import new_id, new_id_text


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
