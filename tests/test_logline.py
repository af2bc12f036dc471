"""The plain progress line for batch-job logs, and its interval's environment variable."""

from __future__ import annotations

import time

import pytest

from featdump.errors import UsageError
from featdump.run.logline import log_seconds, progress_line


def test_progress_line() -> None:
    line = progress_line(1200, 50000, 200, 10.0, 4_600_000)
    assert line == "featdump: 1200/50000 images (2.4%), 100.0 img/s, 460.0 MB/s, ETA 8m08s"
    assert progress_line(0, 10, 0, 0.0).endswith("ETA -")
    assert progress_line(10, 10, 0, 2.0).endswith("ETA 0s")


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan"])
def test_log_seconds_is_checked(monkeypatch, raw: str) -> None:
    monkeypatch.setenv("FEATDUMP_LOG_SECONDS", raw)
    with pytest.raises(UsageError, match="FEATDUMP_LOG_SECONDS"):
        log_seconds()


def test_log_seconds_default_and_value(monkeypatch) -> None:
    monkeypatch.delenv("FEATDUMP_LOG_SECONDS", raising=False)
    assert log_seconds() == 30.0
    monkeypatch.setenv("FEATDUMP_LOG_SECONDS", "0.5")
    assert log_seconds() == 0.5


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


def test_bad_interval_exits_2_before_anything(cli, tmp_path, photos, monkeypatch) -> None:
    out = tmp_path / "x.h5"
    monkeypatch.setenv("FEATDUMP_LOG_SECONDS", "often")
    res = cli("extract", "resnet18", str(photos), "-o", str(out), "--no-pretrained")
    assert res.exit_code == 2 and "FEATDUMP_LOG_SECONDS" in res.stderr and not out.exists()
