"""The writer stage: a thread that owns the output store, behind a queue bounded in bytes."""

from __future__ import annotations

import threading

from featdump.data.batching import Rows
from featdump.errors import FeatdumpError, os_error
from featdump.queues import BoundedQueue
from featdump.run.copies import resolve
from featdump.run.device import WRITE_QUEUE_BYTES
from featdump.store.sink import Store


class Writer:
    """``put`` blocks while the arrays queued or being written exceed ``max_bytes``, but always admits
    one batch, so memory stays below ``max(max_bytes, one batch)``. A write error stops the writing
    and is raised by the next ``put`` or by ``close``."""

    def __init__(self, store: Store, max_bytes: int = WRITE_QUEUE_BYTES, threads: int = 1) -> None:
        self.store = store
        store.write_threads = max(1, threads)  # threads preparing (compressing) whole chunks
        self.queue: BoundedQueue[Rows] = BoundedQueue(max_bytes=max_bytes, hold=True)
        self.thread = threading.Thread(target=self._run, name="featdump-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for rows in self.queue:
                rows.features = resolve(rows.features)  # a device copy in flight: wait for it here
                self.store.append(rows)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            hint = "rerun with --resume to continue"
            self.queue.close(exc if isinstance(exc, FeatdumpError) else os_error(exc, self.store.path, hint=hint))

    def put(self, rows: Rows) -> None:
        self.queue.put(rows, sum(int(getattr(a, "nbytes", 0)) for a in rows.features))

    def discard(self) -> None:
        """Drop the batches not yet being written (a hurried stop: the file keeps its last commit)."""
        self.queue.discard()

    def close(self) -> None:
        self.queue.end()
        self.thread.join()
        if self.queue.error is not None:
            raise self.queue.error
