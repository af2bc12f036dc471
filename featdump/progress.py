"""A minimal progress line for ``featdump.extract(..., progress=True)``.

The command draws its own bar with rich (featdump/cli/render.py); the library must not import the
CLI or a console, so the Python API gets this plain-text line instead. It writes only when asked to
(``progress=True``, or ``progress=None`` with stderr on a terminal), to the stream it was given.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TextProgress:
    """``resnet50  120/200  60%  45.1 img/s  eta 0:02`` on one line, redrawn at most every ``interval`` s.

    Implements the pipeline's progress protocol (``start``, ``advance``, ``stop``)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.total = self.done = self.initial = 0
        self.description = ""
        self._started = self._drawn = 0.0
        self._width = 0

    def start(self, total: int | None, done: int, description: str) -> None:
        self.total, self.done, self.initial, self.description = total or 0, done, done, description  # 0: unknown
        self._started = time.monotonic()
        self._draw(force=True)

    def advance(self, images: int) -> None:
        self.done += images
        self._draw()

    def stop(self) -> None:
        if self._started:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._started = 0.0

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        share = f"{100 * self.done / self.total:3.0f}%" if self.total else "  -%"
        speed = f"{rate:.1f} img/s" if rate else "- img/s"
        eta = _clock((self.total - self.done) / rate) if rate and self.total else "-:--"
        return f"{self.description}  {self.done}/{self.total or '?'}  {share}  {speed}  {_clock(elapsed)}  eta {eta}"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < self.interval:
            return
        self._drawn = now
        text = self.line()
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
