"""The plain progress line for batch-job logs, and its interval's environment variable."""

from __future__ import annotations

import time

from featdump.run.logline import progress_line


def test_progress_line() -> None:
    line = progress_line(1200, 50000, 200, 10.0, 4_600_000)
    assert line == "featdump: 1200/50000 images (2.4%), 100.0 img/s, 460.0 MB/s, ETA 8m08s"
    assert progress_line(0, 10, 0, 0.0).endswith("ETA -")
    assert progress_line(10, 10, 0, 2.0).endswith("ETA 0s")


def test_log_progress_prints_at_its_interval() -> None:
    from featdump.cli.progress import LogProgress

    lines: list[str] = []
    p = LogProgress(0.05, 1_000_000, write=lines.append)
    p.start(100, 0, "m")
    p.advance(40)
    time.sleep(0.2)
    p.stop()
    assert len(lines) >= 2 and all(line.startswith("featdump: 40/100 images (40.0%), ") for line in lines)
    quiet: list[str] = []
    p = LogProgress(60, write=quiet.append)
    p.start(10, 0, "m")
    p.advance(10)
    p.stop()
    assert quiet == []  # a short run prints nothing
