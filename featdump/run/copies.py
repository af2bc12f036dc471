"""Device-to-host copies that overlap the next batch's forward pass (CUDA; CPU outputs are host arrays).

:class:`CudaCopies` copies batch k's outputs into pinned host buffers on a stream of its own, so batch
k+1's forward runs meanwhile; the writer waits for batch k's event only when it stores it.
:class:`CopyQueue` keeps the order and at most ``depth`` copies in flight; a subclass only starts a
copy and says how to wait for it (tests/test_copies.py puts a host thread in place of the stream).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from featdump.queues import BoundedQueue


class Pending(list[Any]):
    """One batch's host buffers (a list, so ``nbytes`` is known before the copy is done)."""

    def __init__(self, host: list[Any], result: Callable[[], list[Any]]) -> None:
        super().__init__(host)
        self.wait = functools.cache(result)  # the arrays, once the copy is done


def resolve(outputs: Any) -> list[Any]:
    """A batch's arrays: a :class:`Pending` waited for, anything else as it is."""
    return outputs.wait() if isinstance(outputs, Pending) else outputs


class CopyQueue:
    """Copies in submission order, at most ``depth`` in flight (the writer waits for each batch's copy
    before it stores it, so none is left in flight once the writer is closed)."""

    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.inflight: BoundedQueue[Pending] = BoundedQueue(depth)

    def _start(self, outputs: list[Any]) -> Pending:  # pragma: no cover - abstract
        raise NotImplementedError

    def submit(self, outputs: list[Any]) -> Pending:
        while not self.inflight.room():
            self.inflight.get().wait()
        pending = self._start(outputs)
        self.inflight.put(pending)
        return pending


class CudaCopies(CopyQueue):
    """Pinned host buffers filled on a copy stream; an event per batch says when they are complete."""

    def __init__(self, device: Any, depth: int = 2) -> None:
        import torch

        super().__init__(depth)
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def _start(self, outputs: list[Any]) -> Pending:
        import torch

        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)  # the outputs are computed before they are copied
        with torch.cuda.stream(self.stream):
            host = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outputs]  # cached by torch
            for h, o in zip(host, outputs, strict=True):
                h.copy_(o, non_blocking=True)
                o.record_stream(self.stream)  # the compute stream may not reuse o's memory before the copy
            event = torch.cuda.Event()
            event.record(self.stream)

        def result() -> list[Any]:
            event.synchronize()
            return [h.numpy() for h in host]

        return Pending(host, result)
