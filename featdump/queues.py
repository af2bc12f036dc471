"""The one bounded queue between the run's threads: read-ahead, the writer, device copies, decode threads.

Unlike ``queue.Queue`` it bounds bytes as well as items (one item always passes, however large).
The producer calls :meth:`put` then :meth:`end`; the consumer iterates and may :meth:`close`; either
may :meth:`discard`. With ``hold``, an item stays counted until the consumer asks for the next one,
so the bound covers what is queued *or being handled* (the writer's batch being written).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """At most ``items`` items and ``max_bytes`` bytes queued (0: no bound of that kind)."""

    def __init__(self, items: int = 0, max_bytes: int = 0, hold: bool = False) -> None:
        self.items, self.max_bytes, self.hold = items, max_bytes, hold
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[T, int]] = collections.deque()
        self.bytes = self.peak = 0  # bytes counted now, the most ever
        self.held: int | None = None  # with hold: the size of the item being handled
        self.ended = self.closed = False
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return len(self.queue)

    def room(self, size: int = 0) -> bool:
        """Whether :meth:`put` of an item of ``size`` bytes would go through without waiting."""
        count = len(self.queue) + (self.held is not None)
        if not count:
            return True
        return not (self.items and count >= self.items) and not (self.max_bytes and self.bytes + size > self.max_bytes)

    def put(self, item: T, size: int = 0) -> bool:
        """Queue ``item`` once there is room; False (item dropped) once the consumer has closed."""
        with self.cond:
            while not self.closed and not self.room(size):
                self.cond.wait()
            if self.closed:
                if self.error is not None:
                    raise self.error
                return False
            self.queue.append((item, size))
            self.bytes += size
            self.peak = max(self.peak, self.bytes)
            self.cond.notify_all()
            return True

    def get(self) -> T:
        """The next item; raises the producer's error, or :class:`StopIteration`, once all are taken."""
        with self.cond:
            self.bytes -= self.held or 0
            self.held = None
            self.cond.notify_all()
            while not self.queue and not self.ended and not self.closed:
                self.cond.wait()
            if not self.queue:
                if self.error is not None and not self.closed:
                    raise self.error
                raise StopIteration
            item, size = self.queue.popleft()
            if self.hold:
                self.held = size
            else:
                self.bytes -= size
            self.cond.notify_all()
            return item

    def __iter__(self) -> Iterator[T]:
        return iter(self.get, object())  # ends where get raises StopIteration

    def end(self, error: BaseException | None = None) -> None:
        """The producer's last word: no more items (``error``: why, raised to the consumer after them)."""
        with self.cond:
            self.ended = True
            self.error = self.error or error
            self.cond.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        """The consumer wants no more: what is queued is dropped; ``error`` is raised by the next put."""
        with self.cond:
            self.closed = True
            self.error = self.error or error
            self._drop()

    def discard(self) -> None:
        """Drop the items queued (not the one being handled)."""
        with self.cond:
            self._drop()

    def _drop(self) -> None:
        self.bytes -= sum(size for _, size in self.queue)
        self.queue.clear()
        self.cond.notify_all()
