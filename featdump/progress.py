"""Progress: the one count of a run's images (:class:`Counter`) under every display, and the plain
line of ``featdump.extract(..., progress=True)`` (:class:`TextProgress`). The command's displays
are featdump/cli/progress.py: the library must not import the CLI or a console.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float) -> str:
    """``1:02:03`` / ``2:03``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Counter:
    """The job's progress protocol (``start``, ``advance``, ``stop``: run/results.py) as counts: images
    done of ``total`` (0: unknown) and this run's rate (a resumed run's earlier images excluded)."""

    total = done = initial = 0
    description = ""
    started = 0.0  # time.monotonic() at start; 0 before and after

    def start(self, total: int | None, done: int, description: str) -> None:
        self.total, self.done, self.initial, self.description = total or 0, done, done, description
        self.started = time.monotonic()

    def advance(self, images: int) -> None:
        self.done += images

    def stop(self) -> None:
        self.started = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self, seconds: float | None = None) -> float:
        """Images per second of this run over ``seconds`` (default: since ``start``)."""
        seconds = self.elapsed() if seconds is None else seconds
        return max(0, self.done - self.initial) / seconds if seconds > 0 else 0.0


class TextProgress(Counter):
    """``resnet50  120/200  60%  45.1 img/s  0:03  eta 0:02`` on one line, redrawn at most every ``interval`` s."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._drawn = 0.0
        self._width = 0

    def start(self, total: int | None, done: int, description: str) -> None:
        super().start(total, done, description)
        self._draw(force=True)

    def advance(self, images: int) -> None:
        super().advance(images)
        self._draw()

    def stop(self) -> None:
        if self.started:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            super().stop()

    def line(self) -> str:
        elapsed = self.elapsed()
        rate = self.rate(elapsed)
        share = f"{100 * self.done / self.total:3.0f}%" if self.total else "  -%"
        speed = f"{rate:.1f} img/s" if rate else "- img/s"
        eta = clock((self.total - self.done) / rate) if rate and self.total else "-:--"
        return f"{self.description}  {self.done}/{self.total or '?'}  {share}  {speed}  {clock(elapsed)}  eta {eta}"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < self.interval:
            return
        self._drawn = now
        text = self.line()
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
