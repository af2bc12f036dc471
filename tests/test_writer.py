"""The writer thread: its queue is bounded in bytes, one oversized batch still passes, and its
errors reach the main thread."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from featdump.data.batching import Rows


class _SlowStore:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.rows = 0
        self.progress = SimpleNamespace(num_images=0)
        self.path = "slow.h5"
        self.lock = threading.Lock()

    def append(self, rows: Rows) -> None:
        time.sleep(self.delay)
        self.rows += len(rows.paths)


def test_writer_queue_is_bounded_in_bytes() -> None:
    from featdump.run.writer import Writer

    store = _SlowStore(0.01)
    batch = [np.zeros((4, 1000), np.float32)]  # 16 000 bytes a batch
    writer = Writer(store, max_bytes=50_000)  # type: ignore[arg-type]
    for _ in range(20):
        writer.put(Rows(batch, ["p"] * 4, [], 0))
        assert writer.queue.bytes <= 50_000
    writer.close()
    assert store.rows == 80
    assert 16_000 <= writer.queue.peak <= 48_000
    assert writer.queue.bytes == 0


def test_writer_admits_one_batch_larger_than_the_bound() -> None:
    from featdump.run.writer import Writer

    store = _SlowStore(0.0)
    writer = Writer(store, max_bytes=1_000)  # type: ignore[arg-type]
    big = [np.zeros(10_000, np.float32)]
    for _ in range(3):
        writer.put(Rows(big, ["p"], [], 0))
    writer.close()
    assert store.rows == 3
    assert writer.queue.peak == big[0].nbytes  # one at a time: never two of them queued


def test_writer_error_reaches_the_main_thread() -> None:
    from featdump.errors import FeatdumpError
    from featdump.run.writer import Writer

    class Broken(_SlowStore):
        def append(self, *a: Any) -> None:
            raise OSError(28, "No space left on device")

    writer = Writer(Broken(0.0), max_bytes=10)  # type: ignore[arg-type]
    writer.put(Rows([np.zeros(100)], ["p"], [], 0))
    with pytest.raises(FeatdumpError, match="disk space"):
        for _ in range(50):
            writer.put(Rows([np.zeros(100)], ["p"], [], 0))
            time.sleep(0.01)
        writer.close()
