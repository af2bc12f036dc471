"""The progress displays and their one count (featdump/progress.py, featdump/cli/progress.py)."""

from __future__ import annotations

import io
import time

from featdump.cli.progress import LogProgress
from featdump.progress import Counter, TextProgress


def test_the_rate_counts_this_run_only() -> None:
    c = Counter()
    c.start(50000, 200, "m")  # a resumed run: 200 images were done before
    c.advance(1000)
    assert c.rate(10.0) == 100.0 and c.rate(0.0) == 0.0
    assert 0 < c.elapsed() < 5


def test_the_log_line() -> None:
    p = LogProgress(30, 4_600_000)
    p.start(50000, 200, "m")
    p.advance(1000)
    assert p.line(10.0) == "featdump: 1200/50000 images (2.4%), 100.0 img/s, 460.0 MB/s, ETA 8m08s"
    p.start(10, 0, "m")
    assert p.line(0.0).endswith("ETA -")
    p.advance(10)
    assert p.line(2.0).endswith("ETA 0s")
    p.stop()
    p = LogProgress(30)
    p.start(None, 0, "m")  # a stream of unknown length
    p.advance(40)
    assert p.line(2.0) == "featdump: 40/? images, 20.0 img/s"
    p.stop()


def test_log_progress_prints_at_its_interval() -> None:
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


def test_the_api_line_is_redrawn_in_place() -> None:
    out = io.StringIO()
    p = TextProgress(out, interval=0)
    p.start(8, 0, "resnet18")
    p.advance(8)
    p.stop()
    text = out.getvalue()
    assert text.startswith("\rresnet18  0/8    0%  - img/s  0:00  eta -:--") and text.endswith("\n")
    assert "\rresnet18  8/8  100%  " in text and " img/s  0:00  eta 0:00" in text
