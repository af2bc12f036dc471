"""CPU runs: decoding in a pool of threads, batches assembled in the main thread.

Pillow releases the GIL while it decodes and resamples, so threads decode in parallel without
the cost of worker processes (pickling every batch through a pipe, a second copy of the
interpreter per worker). timm's eval transform is split in two halves that give the same numbers
as the whole: the PIL steps (resize, crop) run in the threads; to-tensor and normalisation run
once per batch in this thread, on the stacked uint8 pixels, as the same elementwise float32
operations (``/ 255``, ``- mean``, ``/ std``), and the batch comes out channels_last already.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from featdump.data.images import Batch, ImageDataset, collate

_TO_TENSOR = ("ToTensor", "MaybeToTensor")


class SplitTransform:
    """timm's eval transform as ``pil`` (per image, any thread) + ``finish`` (per batch).

    ``pil(img)`` returns an ``(H, W, 3)`` uint8 array when the rest of the transform is
    to-tensor + normalisation (what ``timm.data.create_transform`` builds for evaluation), else
    the fully transformed tensor (any other transform: applied whole, per image).
    """

    def __init__(self, transform: Any) -> None:
        steps = list(getattr(transform, "transforms", [transform]))
        names = [type(s).__name__ for s in steps]
        cut = next((k for k, name in enumerate(names) if name in _TO_TENSOR), None)
        self.whole = transform
        self.pil_steps: list[Any] = steps[:cut] if cut is not None else []
        self.to_tensor: Any = steps[cut] if cut is not None else None
        self.tensor_steps: list[Any] = steps[cut + 1 :] if cut is not None else []
        self.batch_steps = [_batched(step) for step in self.tensor_steps]
        self.split = cut is not None

    def pil(self, img: Any) -> Any:
        import numpy as np

        if not self.split:
            return self.whole(img)
        for step in self.pil_steps:
            img = step(img)
        if getattr(img, "mode", None) != "RGB":  # not 8-bit RGB after all: the rest as it is
            for step in [self.to_tensor, *self.tensor_steps]:
                img = step(img)
            return img
        return np.asarray(img)

    def finish(self, items: Sequence[Any]) -> Any:
        """Stacked ``(B, 3, H, W)`` float32 pixels (channels_last strides when all items were
        uint8 arrays), equal element for element to the transform applied per image."""
        import numpy as np
        import torch

        if all(isinstance(x, np.ndarray) for x in items):
            x = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2)  # NHWC memory = channels_last
            x = x.to(torch.float32).div(255)  # torchvision's to_tensor: uint8 -> float, / 255
            for step in self.batch_steps:
                x = step(x)
            return x
        rows = [self._tensor(x) for x in items]
        return torch.stack(rows)

    def _tensor(self, x: Any) -> Any:
        import numpy as np
        import torch

        if not isinstance(x, np.ndarray):
            return x
        t = torch.from_numpy(x).permute(2, 0, 1).to(torch.float32).div(255)
        for step in self.tensor_steps:
            t = step(t)
        return t


def _batched(step: Any) -> Callable[[Any], Any]:
    """One post-to-tensor step on a (B, C, H, W) batch: torchvision's Normalize as the same
    ``sub_(mean).div_(std)`` broadcast over the batch, anything else image by image."""
    import torch

    if type(step).__name__ == "Normalize" and hasattr(step, "mean") and hasattr(step, "std"):
        mean = torch.as_tensor(step.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(step.std, dtype=torch.float32).view(1, -1, 1, 1)
        return lambda x: x.sub_(mean).div_(std)  # x is float32: to_tensor's output
    return lambda x: torch.stack([step(row) for row in x])


def lower_priority(nice: int) -> None:
    """This thread's nice value (Linux, where each thread has its own); best effort."""
    if nice > 0 and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class ThreadLoader:
    """Batches in list order, decoded by ``threads`` threads (0: in this thread), up to
    ``prefetch`` batches ahead. Failed images are records in the batch, like the DataLoader's.

    ``nice``: the decode threads' nice value. Where they share cores with the forward pass's
    OpenMP threads, a decode thread that takes a core mid-layer stalls the whole layer (the other
    OpenMP thread waits at the barrier); at nice 19 they run in the gaps instead. So that they
    can never starve (other jobs on the cores), this thread decodes any image of the next batch
    that no decode thread has started when it needs that batch.
    """

    def __init__(
        self, dataset: ImageDataset, batch_size: int, threads: int, prefetch: int = 2, nice: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.threads = threads
        self.prefetch = max(1, prefetch)
        self.nice = nice
        self.split = SplitTransform(dataset.transform)
        # the same dataset with the PIL half of the transform: item i is (i, uint8 array, "") or a failure record
        self._decode = ImageDataset(dataset.refs, self.split.pil, dataset.max_pixels, dataset.loader).__getitem__

    def _collect(self, jobs: list[tuple[concurrent.futures.Future[tuple[int, Any, str]], int]]) -> list[Any]:
        """The batch's results in order: images no decode thread has started yet are decoded
        here (while this thread would only wait), the others come from their threads."""
        here = {i: self._decode(i) for f, i in jobs if not f.done() and f.cancel()}
        return [here[i] if i in here else f.result() for f, i in jobs]

    def _batch(self, samples: list[tuple[int, Any, str]]) -> Batch:
        return collate(samples, stack=self.split.finish)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.dataset)
        starts = range(0, n, self.batch_size)
        if self.threads <= 0:
            for s in starts:
                yield self._batch([self._decode(i) for i in range(s, min(n, s + self.batch_size))])
            return
        pool = concurrent.futures.ThreadPoolExecutor(
            self.threads, thread_name_prefix="featdump-decode", initializer=lower_priority, initargs=(self.nice,)
        )
        queued: collections.deque[list[tuple[concurrent.futures.Future[tuple[int, Any, str]], int]]]
        queued = collections.deque()
        todo = iter(starts)
        try:
            while True:
                while len(queued) <= self.prefetch:  # the batch to hand out next + `prefetch` more
                    s = next(todo, None)
                    if s is None:
                        break
                    queued.append([(pool.submit(self._decode, i), i) for i in range(s, min(n, s + self.batch_size))])
                if not queued:
                    return
                yield self._batch(self._collect(queued.popleft()))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # images being decoded finish (ms); the rest are dropped
