"""CPU runs: decoding in a pool of threads, batches assembled in the main thread.

Pillow releases the GIL while it decodes and resamples, so threads decode in parallel without
worker processes' pickling. The PIL half of the eval transform runs in the threads, to-tensor and
normalisation once per batch here (:class:`~featdump.data.transform.SplitTransform`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from featdump.data.datasets import Batch, ImageDataset, collate
from featdump.data.transform import SplitTransform
from featdump.queues import BoundedQueue


def lower_priority(nice: int) -> None:
    """This thread's nice value (Linux, where each thread has its own); best effort."""
    if nice > 0 and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class ThreadLoader:
    """A batch per item of ``batches`` (lists of dataset keys), decoded by ``threads`` threads (0: in
    this thread), up to ``prefetch`` batches ahead.

    ``nice``: the decode threads' nice value. A decode thread that takes a core mid-layer stalls the
    forward pass's OpenMP barrier; at nice 19 they run in the gaps. So they never starve, this thread
    decodes any image of the next batch no decode thread has started when it needs that batch.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batches: Iterable[list[Any]],
        threads: int,
        prefetch: int = 2,
        nice: int = 0,
        group: Any = None,
    ) -> None:
        self.batches = batches
        self.threads = threads
        self.prefetch = max(1, prefetch)
        self.nice = nice
        self.split = SplitTransform(dataset.transform)
        # a size mode's group: the images batched by shape (featdump/data/batching.py), each by finish
        self.stack = functools.partial(group, stack=self.split.finish) if group else self.split.finish
        # the same dataset (limits, hosts that answered) with the PIL half: item i is (i, uint8 array, "", size)
        decoding = copy.copy(dataset)
        decoding.transform = self.split.pil
        self._decode = decoding.__getitem__

    def __iter__(self) -> Iterator[Batch]:
        return (collate(samples, stack=self.stack) for samples in self.samples())

    def samples(self) -> Iterator[list[tuple[int, Any, str, Any]]]:
        """Each batch's samples in order, not collated (``--tiles`` cuts each image itself)."""
        if self.threads <= 0:
            for each in self.batches:
                yield [self._decode(k) for k in each]
            return
        pool = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix="featdump-decode", initializer=lower_priority, initargs=(self.nice,)
        )
        queued: BoundedQueue[list[tuple[concurrent.futures.Future[tuple[int, Any, str, Any]], Any]]]
        queued = BoundedQueue(self.prefetch + 1)  # the batch to hand out next + `prefetch` more
        todo: Iterator[Any] = iter(self.batches)
        try:
            while True:
                while queued.room() and (keys := next(todo, None)) is not None:
                    queued.put([(pool.submit(self._decode, k), k) for k in keys])
                if not queued:
                    return
                jobs = queued.get()
                # images no decode thread has started yet are decoded here, while this thread would only wait
                here = {k: self._decode(key) for k, (f, key) in enumerate(jobs) if not f.done() and f.cancel()}
                yield [here[k] if k in here else f.result() for k, (f, _) in enumerate(jobs)]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # images being decoded finish (ms); the rest are dropped
