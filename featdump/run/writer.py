"""The writer stage: a thread that owns the output store, behind a queue bounded in bytes."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from featdump.errors import FeatdumpError, os_error
from featdump.run.copies import resolve
from featdump.run.device import WRITE_QUEUE_BYTES
from featdump.store.sink import Store


class Writer:
    """Owns the Store in a background thread, behind a queue bounded in bytes.

    ``put`` blocks while the feature arrays queued or being written would exceed ``max_bytes``;
    one batch is always admitted (however large), so memory stays below
    ``max(max_bytes, one batch)`` whatever the number of images.
    """

    _STOP = object()

    def __init__(self, store: Store, max_bytes: int = WRITE_QUEUE_BYTES, threads: int = 1) -> None:
        self.store = store
        store.write_threads = max(1, threads)  # threads preparing (compressing) whole chunks
        self.max_bytes = max_bytes
        self.pending = 0  # bytes queued or being written
        self.peak = 0  # the most ``pending`` ever was (tests, bench)
        self.items: collections.deque[tuple[Any, int]] = collections.deque()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="featdump-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.items:
                    self.cond.wait()
                item, size = self.items[0]  # still counted while it is written
            if item is self._STOP:
                return
            if self.error is None:
                try:
                    t0 = time.perf_counter()
                    feats, *rest = item
                    self.store.append(resolve(feats), *rest)  # a device copy in flight: wait for it here
                    self.seconds += time.perf_counter() - t0
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc
            with self.cond:
                self.items.popleft()
                self.pending -= size
                self.cond.notify_all()

    def put(self, item: tuple[Any, ...]) -> None:
        self.raise_error()
        size = sum(int(getattr(a, "nbytes", 0)) for a in item[0])
        with self.cond:
            while self.pending and self.pending + size > self.max_bytes and self.error is None:
                self.cond.wait()
            self.items.append((item, size))
            self.pending += size
            self.peak = max(self.peak, self.pending)
            self.cond.notify_all()

    def discard(self) -> None:
        """Drop the batches not yet being written (a hurried stop: the file keeps its last commit)."""
        with self.cond:
            while len(self.items) > 1:
                _, size = self.items.pop()
                self.pending -= size
            self.cond.notify_all()

    def raise_error(self) -> None:
        if self.error is not None:
            raise _write_error(self.store, self.error)

    def close(self) -> None:
        with self.cond:
            self.items.append((self._STOP, 0))
            self.cond.notify_all()
        self.thread.join()
        self.raise_error()


def _write_error(store: Store, exc: BaseException) -> FeatdumpError:
    if isinstance(exc, FeatdumpError):
        return exc
    return os_error(exc, store.path, hint="rerun with --resume to continue")
