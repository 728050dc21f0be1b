"""Request, run and trace ids: valid, unique, and ordered by time (for append-mostly indexes)."""

from __future__ import annotations

import time
import uuid

from flowhost.ids import new_trace_id, uuid7


def test_uuid7_is_an_rfc_9562_version_7_uuid_carrying_the_time() -> None:
    before = time.time_ns() // 1_000_000
    text = uuid7()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(text)
    assert str(parsed) == text
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_uuid7s_are_unique_and_sort_by_time() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    first, later = uuid7(), None
    while later is None or later[:13] == first[:13]:  # the next millisecond
        later = uuid7()
    assert first < later


def test_trace_ids_are_valid_w3c_ids_starting_with_the_time() -> None:
    ids = [new_trace_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 2**128 for i in ids)
    now = int(time.time())
    assert all(abs((i >> 96) - now) <= 2 for i in ids)  # X-Ray reads these 32 bits as the time


def test_trace_ids_sort_by_time_within_a_second() -> None:
    """The fraction of the second after the seconds: ids made 100 µs apart sort in order (the
    trace store's primary key grows at its end, as the time index does)."""
    made = []
    for _ in range(50):
        made.append(new_trace_id())
        start = time.perf_counter()
        while time.perf_counter() - start < 1e-4:
            pass
    assert made == sorted(made)
    first, last = made[0] >> 80, made[-1] >> 80
    assert 0 < last - first < 2**16  # about 5 ms: within a second's 65,536 steps
