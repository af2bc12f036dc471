"""Overlapped device copies (featdump/run/copies.py), through the CPU stand-in of the copy stream:
order kept, a bounded number in flight, everything drained at the end; the writer waits for a
pending copy before storing it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from featdump.run.copies import CopyQueue, Pending, resolve


class ThreadCopies(CopyQueue):
    """Host arrays copied by a background thread: the CPU stand-in for a CUDA copy stream."""

    def __init__(self, depth: int = 2, copy: Callable[[Any], Any] = lambda x: np.array(x, copy=True)) -> None:
        super().__init__(depth)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="featdump-copies")
        self.copy = copy

    def _start(self, outputs: list[Any]) -> Pending:
        future = self.pool.submit(lambda: [self.copy(o) for o in outputs])
        return Pending(list(outputs), future.result)

    def close(self) -> None:
        while self.inflight:
            self.inflight.get().wait()
        self.pool.shutdown(wait=True)


def test_order_bound_and_drain() -> None:
    gate = threading.Event()

    def slow_copy(x):
        gate.wait(5)
        return np.array(x, copy=True)

    q = ThreadCopies(depth=2, copy=slow_copy)
    first = q.submit([np.full(3, 0)])
    second = q.submit([np.full(3, 1)])
    assert len(q.inflight) == 2
    done = threading.Event()
    got = []

    def third() -> None:
        got.append(q.submit([np.full(3, 2)]))  # depth 2 reached: waits for the oldest copy
        done.set()

    t = threading.Thread(target=third)
    t.start()
    time.sleep(0.2)
    assert not done.is_set()
    gate.set()
    t.join(5)
    assert done.is_set() and len(q.inflight) == 2
    q.close()
    assert len(q.inflight) == 0
    assert [int(resolve(p)[0][0]) for p in (first, second, *got)] == [0, 1, 2]


def test_pending_counts_bytes_and_resolves() -> None:
    q = ThreadCopies(depth=1)
    src = [np.arange(6, dtype=np.float16).reshape(2, 3), np.ones((2, 4), np.float32)]
    p = q.submit(src)
    assert isinstance(p, Pending) and sum(a.nbytes for a in p) == 12 + 32
    arrays = resolve(p)
    np.testing.assert_array_equal(arrays[0], src[0])
    assert arrays[0] is not src[0]
    assert resolve(src) is src  # host arrays pass through
    q.close()


def test_writer_stores_pending_batches_in_order(tmp_path) -> None:
    import h5py

    from featdump.data.batching import Rows
    from featdump.model.layers import LayerInfo
    from featdump.run.writer import Writer
    from featdump.store.sink import Store

    layers = [LayerInfo("a", "a", 0, 2, 2, (2, 3))]
    store = Store.create(tmp_path / "f.h5", {"format": "featdump"}, layers, pool="none", dtype="float32", compression="none")
    q = ThreadCopies(depth=2)
    w = Writer(store, threads=2)
    for k in range(5):
        w.put(Rows(q.submit([np.full((2, 2, 3), k, np.float32)]), [f"p{2 * k}", f"p{2 * k + 1}"], [], 2 * k + 2))
    w.close()
    q.close()
    store.finish()
    store.close()
    with h5py.File(tmp_path / "f.h5") as h5:
        assert h5["features/a"][:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ThreadCopies(depth=0)
