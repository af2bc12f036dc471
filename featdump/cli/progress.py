"""Progress for people: a rich bar on a terminal, plain lines at a steady interval in a job's log."""

from __future__ import annotations

import sys
from typing import Any

from featdump.cli.render import console


class RichProgress:
    """Progress bar with images/s and ETA on a terminal (stderr); silent when piped or quiet."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int | None, done: int, description: str) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        class Rate(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                speed = task.finished_speed or task.speed
                if not speed and task.elapsed:
                    speed = (task.completed - task.fields.get("initial", 0)) / task.elapsed
                return Text(f"{speed:.1f} img/s" if speed else "- img/s")

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            Rate(""),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console(stderr=True),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total or None, completed=done, initial=done)

    def advance(self, images: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, images)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class LogProgress:
    """A plain line every ``FEATDUMP_LOG_SECONDS`` (default 30) when stderr is not a terminal (Slurm
    and PBS logs): images done/total, img/s, MB/s, ETA. Nothing before the first interval, so short
    runs stay silent; a last line at the end once any was printed."""

    def __init__(self, seconds: float, bytes_per_image: int = 0, write: Any = None) -> None:
        import threading

        self.seconds = seconds
        self.bytes_per_image = bytes_per_image
        self.write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self.total = self.done = self.started_at = 0
        self.t0 = 0.0
        self.printed = 0
        self._stop = threading.Event()
        self._thread: Any = None

    def ready(self, backbone: Any, out_path: str, placement: Any, dtype: str = "float32", pool: str = "none") -> None:
        self.bytes_per_image = sum(layer.bytes_per_image(dtype, pool) for layer in backbone.layers)

    def start(self, total: int, done: int, description: str) -> None:
        import threading
        import time

        self.total, self.done, self.started_at, self.t0 = total, done, done, time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="featdump-log", daemon=True)
        self._thread.start()

    def _line(self) -> None:
        import time

        from featdump.run.logline import progress_line

        self.write(progress_line(self.done, self.total, self.started_at, time.perf_counter() - self.t0, self.bytes_per_image))
        self.printed += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.seconds):
            self._line()

    def advance(self, images: int) -> None:
        self.done += images

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.printed:
                self._line()


def progress_for(quiet: bool) -> Any:
    """A bar on a terminal, plain lines in a log file, nothing with --quiet."""
    if quiet:
        return RichProgress(enabled=False)
    if sys.stderr.isatty():
        return RichProgress(enabled=True)
    from featdump.environment import LOG_SECONDS

    return LogProgress(LOG_SECONDS.value())
