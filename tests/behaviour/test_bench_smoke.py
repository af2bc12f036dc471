"""``make bench`` must keep working: run it in quick mode (timing is never checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs `make bench --quick`


def test_bench_quick_runs_and_saves_its_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = list(tmp_path.glob("bench-*-cpu-quick.json"))
    assert len(saved) == 1
    report = json.loads(saved[0].read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpus"] >= 1
    (case,) = report["throughput"]
    assert set(case["img_s_median"]) == {"bare forward", "serial decode + forward", "naive loop", "featdump"}
    assert all(v > 0 for v in case["img_s_median"].values())
    assert "featdump / bare forward" in case["ratio_median"]
    assert {r["--compression"] for r in report["codecs"]} >= {"none", "gzip", "lzf", "zstd"}
    assert all(0 < r["float16_ratio"] <= 1.01 for r in report["codecs"])
    assert set(report["memory"]["peak_bytes"]) == {"4", "12"}
    photos = report["photos"]  # camera-sized photos: whole featdump processes against the bare forward
    assert photos["median"]["featdump bs 8 / best bare"] > 0 and photos["megapixels"][2] <= 4.5
    assert set(photos["stage_cpu_ms"]) >= {"decode + resize + to-tensor", "forward (bs 8)", "write (uncompressed)"}
    (row,) = report["cpubatch"]["rows"]  # the bare forward per batch size
    assert row["model"] == "resnet18" and set(row["of_best_median"]) == {"4", "8"} and row["best"] in (4, 8)
    table = (tmp_path / "latest-quick.md").read_text()
    assert table.strip() in proc.stdout
    for heading in ("### Throughput", "### Photos on a CPU", "### CPU batch size", "### Codecs", "### Peak RSS",
                    "featdump / bare forward"):  # fmt: skip
        assert heading in table
