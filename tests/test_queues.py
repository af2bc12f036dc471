"""The bounded queue between the run's threads: bounded by count and bytes (one item always passes),
the producer's error reaches the consumer after the items before it, the consumer's close reaches
the producer, discard drops what is queued."""

from __future__ import annotations

import threading
import time

import pytest

from featdump.queues import BoundedQueue


def test_bounds_by_count_and_bytes_one_item_always_passes() -> None:
    q: BoundedQueue[str] = BoundedQueue(items=2, max_bytes=100)
    assert q.room(1000)  # empty: any size passes
    q.put("a", 60)
    assert q.room(40) and not q.room(41)
    q.put("b", 10)
    assert not q.room(0)  # two items: the count bound
    assert q.get() == "a" and q.bytes == 10 and q.peak == 70


def test_hold_counts_the_item_being_handled_until_the_next_get() -> None:
    q: BoundedQueue[str] = BoundedQueue(max_bytes=100, hold=True)
    q.put("a", 80)
    assert q.get() == "a" and q.bytes == 80 and not q.room(30)
    q.end()
    assert list(q) == [] and q.bytes == 0


def test_producer_error_comes_after_the_items_and_put_waits_for_room() -> None:
    q: BoundedQueue[int] = BoundedQueue(items=1)

    def produce() -> None:
        for i in range(3):
            q.put(i)
        q.end(ValueError("stream broke"))

    threading.Thread(target=produce).start()
    time.sleep(0.1)
    assert len(q) == 1  # the producer waits for room
    got = []
    with pytest.raises(ValueError, match="stream broke"):
        for item in q:
            got.append(item)
    assert got == [0, 1, 2]


def test_close_drops_the_queue_and_reaches_the_producer() -> None:
    q: BoundedQueue[int] = BoundedQueue(items=1)
    q.put(0)
    q.discard()
    assert len(q) == 0
    q.put(1)
    q.close()
    assert len(q) == 0 and q.put(2) is False  # a consumer that left: items are dropped
    failed: BoundedQueue[int] = BoundedQueue()
    failed.close(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        failed.put(0)
