"""Progress for people: a rich bar on a terminal, plain lines at a steady interval in a job's log
(both count with featdump/progress.py's :class:`~featdump.progress.Counter`)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from rich import progress as rp
from rich.text import Text

from featdump.cli.render import console
from featdump.environment import LOG_SECONDS
from featdump.progress import Counter


class RichProgress(Counter):
    """Progress bar with images/s and ETA on a terminal (stderr)."""

    _progress: Any = None
    _task: Any = None

    def start(self, total: int | None, done: int, description: str) -> None:
        super().start(total, done, description)
        counter = self

        class Rate(rp.TextColumn):
            def render(self, task: Any) -> Text:
                speed = counter.rate()
                return Text(f"{speed:.1f} img/s" if speed else "- img/s")

        columns = (rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TaskProgressColumn())
        self._progress = rp.Progress(
            *columns, Rate(""), rp.TimeElapsedColumn(), rp.TextColumn("eta"), rp.TimeRemainingColumn(), console=console(stderr=True)
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total or None, completed=done)

    def advance(self, images: int) -> None:
        super().advance(images)
        if self._progress is not None:
            self._progress.advance(self._task, images)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()  # its last frame still shows this run's rate
            self._progress = None
        super().stop()


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LogProgress(Counter):
    """A plain line every ``seconds`` (``FEATDUMP_LOG_SECONDS``) when stderr is not a terminal (Slurm
    and PBS logs): images done/total, img/s, MB/s, ETA. Nothing before the first interval, so short
    runs stay silent; a last line at the end once any was printed."""

    def __init__(self, seconds: float, bytes_per_image: int = 0, write: Callable[[str], Any] | None = None) -> None:
        self.seconds = seconds
        self.bytes_per_image = bytes_per_image  # feature bytes (uncompressed); 0 leaves MB/s out
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.printed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ready(self, backbone: Any, dtype: str, pool: str) -> None:
        self.bytes_per_image = sum(layer.bytes_per_image(dtype, pool) for layer in backbone.layers)

    def start(self, total: int | None, done: int, description: str) -> None:
        super().start(total, done, description)
        self._thread = threading.Thread(target=self._loop, name="featdump-log", daemon=True)
        self._thread.start()

    def line(self, seconds: float) -> str:
        """``"featdump: 1200/50000 images (2.4%), 85.3 img/s, 392.1 MB/s, ETA 9m32s"`` after ``seconds``."""
        rate, left = self.rate(seconds), max(0, self.total - self.done)
        share = f" ({100.0 * self.done / self.total:.1f}%)" if self.total else ""  # a stream's length: unknown
        parts = [f"featdump: {self.done}/{self.total or '?'} images{share}", f"{rate:.1f} img/s"]
        if self.bytes_per_image:
            parts.append(f"{rate * self.bytes_per_image / 1e6:.1f} MB/s")
        if self.total:
            parts.append(f"ETA {_duration(left / rate)}" if rate > 0 else ("done" if not left else "ETA -"))
        return ", ".join(parts)

    def _print(self) -> None:
        self.write(self.line(self.elapsed()))
        self.printed += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            self._print()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.printed:
                self._print()
        super().stop()


def progress_for(quiet: bool) -> Any:
    """A bar on a terminal, plain lines in a log file, nothing with --quiet."""
    if quiet:
        return Counter()
    return RichProgress() if sys.stderr.isatty() else LogProgress(LOG_SECONDS.value())
