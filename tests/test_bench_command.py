"""`featdump bench`: the four timings, the limit and what to try; only temporary files, removed."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_names_the_limit(cli, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "here" / "x.h5"
    out.parent.mkdir()
    res = cli("bench", "resnet18", str(photos), "-o", str(out), "--no-pretrained", "--img-size", "64",
              "--out-indices", "-1", "--dtype", "float16", "--seconds", "2", "--images", "16")  # fmt: skip
    assert res.exit_code == 0, res.output
    for stage in ("decode", "forward", "write", "pipeline"):
        assert stage in res.stdout
    assert "limit: " in res.stdout and "Try:" in res.stdout
    assert list(out.parent.iterdir()) == []  # nothing left behind


@pytest.mark.slow
def test_bench_core_returns_data(photos: Path, tmp_path: Path) -> None:
    from featdump.options import resolve
    from featdump.run.benchmark import run_benchmark

    cfg = resolve({"model": "resnet18", "inputs": (str(photos),), "output": str(tmp_path / "x.h5"), "pretrained": False,
                   "img_size": "64", "out_indices": "-1", "compression": "zstd"})  # fmt: skip
    result = run_benchmark(cfg, seconds=1.5, images=12)
    assert [s.name for s in result.stages] == ["decode", "forward", "write", "pipeline"]
    assert all(s.images > 0 and s.rate > 0 for s in result.stages)
    assert result.limit in ("decode", "forward", "write", "pipeline") and result.advice


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--seconds", "nan", "--seconds takes a number of seconds above 0 and at most 3600, not nan"),
        ("--seconds", "inf", "--seconds takes a number of seconds above 0 and at most 3600, not inf"),
        ("--seconds", "-1", "--seconds takes a number of seconds above 0 and at most 3600, not -1.0"),
        ("--images", "2000000000", "--images takes a whole number from 1 to 100,000, not 2000000000"),
        ("--images", "0", "--images takes a whole number from 1 to 100,000, not 0"),
    ],
)
def test_bench_refuses_unbounded_timings(cli, photos: Path, tmp_path: Path, flag: str, value: str, message: str) -> None:
    res = cli("bench", "resnet18", str(photos), "-o", str(tmp_path / "x.h5"), "--no-pretrained", flag, value)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"featdump: error: {message}"]
