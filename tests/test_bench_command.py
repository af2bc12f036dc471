"""`featdump bench`: the four timings, the limit and what to try; only temporary files, removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from featdump.configure import resolve
from featdump.run.benchmark import BenchResult, Stage, advise
from featdump.run.device import CPU_BATCH


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
    assert not [line for line in res.stdout.splitlines() if "smaller model" in line and "resnet18" in line]
    bs = 2 * CPU_BATCH  # resnet18's weights (45 MB) are over LARGE_WEIGHTS
    assert f"(batch {bs}," in res.stdout and f"batch {bs} " in res.stdout  # header and rows alike


@pytest.mark.slow
def test_bench_core_returns_data(photos: Path, tmp_path: Path) -> None:
    from featdump.configure import resolve
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


def _result(limit: str, megapixels: float = 0.3, jpeg: bool = True) -> BenchResult:
    rates = {"decode": 50.0, "forward": 50.0, "write": 50.0}
    rates[limit] = 10.0
    r = BenchResult("resnet50", "cpu", 8, 2, 1, 1 << 20, megapixels=megapixels, jpeg=jpeg,
                    forward_rates={8: rates["forward"], 4: rates["forward"] * 0.8, 16: rates["forward"] * 1.3})  # fmt: skip
    r.stages = [Stage(name, int(rate * 10), 10.0) for name, rate in rates.items()] + [Stage("pipeline", 90, 10.0)]
    return r


CFG = resolve({"model": "resnet50", "inputs": ("x",), "output": "x.h5"})


def test_cpu_forward_advice_fits_a_cpu() -> None:
    r = _result("forward")
    advise(r, CFG, "cpu")
    text = "\n".join(r.advice)
    assert r.limit == "forward"
    for wanted in ("--batch-size 16 (1.30x", "--img-size", "--compile", "a smaller model"):
        assert wanted in text, wanted
    assert "--precision" not in text and "GPU" not in text
    advise(r, CFG, "cuda")
    assert "--precision bf16" in "\n".join(r.advice) and "--img-size" not in "\n".join(r.advice)


@pytest.mark.parametrize(("model", "smaller"), [("resnet18", "tf_efficientnet_lite0, convnext_atto"),
                                                ("convnext_atto.d2_in1k", "tf_efficientnet_lite0"),
                                                ("tf_efficientnet_lite0", None)])  # fmt: skip
def test_a_smaller_model_is_smaller_than_the_one_benched(model: str, smaller: str | None) -> None:
    r = _result("forward")
    advise(r, resolve({"model": model, "inputs": ("x",), "output": "x.h5"}), "cpu")
    said = [t for t in r.advice if "smaller model" in t]
    assert said == ([f"a smaller model (e.g. {smaller})"] if smaller else []), said


@pytest.mark.parametrize(("device", "jpeg", "megapixels"), [("cpu", False, 3.0), ("cpu", True, 3.0), ("cuda", False, 0.5), ("cuda", True, 0.5)])
def test_decode_advice_fits_the_inputs(device: str, jpeg: bool, megapixels: float) -> None:
    r = _result("decode", megapixels, jpeg)
    advise(r, CFG, device)
    text = "\n".join(r.advice)
    assert r.limit == "decode"
    assert ("resize the images first: they average 3.0 MP" in text) == (megapixels > 2)
    assert ("--fast-decode" in text) == jpeg  # JPEG DCT scaling: nothing to do for PNGs
    assert ("--decode gpu" in text) == (jpeg and device == "cuda")
    assert ("--workers" in text) == (device == "cuda")  # on a CPU the decoders already share every core


def test_pipeline_faster_than_its_limit_is_said_to_be_noise() -> None:
    r = _result("write")
    r.stages[-1] = Stage("pipeline", 150, 10.0)  # 15 img/s against the writer's 10 alone
    advise(r, CFG, "cpu")
    assert r.limit == "write" and "cannot do for long" in r.note and "--dtype float16" in r.advice[0]


@pytest.mark.slow
def test_bench_on_large_pngs_says_resize_first(cli, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # 3 MP of noise: PNG decoding costs far more than resnet18's forward at 64 px
        Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(folder / f"big{i}.png")
    res = cli("bench", "resnet18", str(folder), "-o", str(tmp_path / "x.h5"), "--no-pretrained", "--img-size", "64",
              "--pool", "avg", "--seconds", "3", "--images", "12", "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert "0.0039 MiB/image as stored" in text  # resnet18's five pooled levels: 1024 float32 values
    assert "limit: decode" in text or "limit: pipeline" in text  # the pipeline: on a machine other jobs load
    assert "resize the images first: they average 3.0 MP" in text
    assert "--fast-decode" not in text and "--decode gpu" not in text and "--precision" not in text


def test_a_pipeline_limit_also_says_what_helps_the_slowest_stage() -> None:
    r = _result("forward")
    r.stages[-1] = Stage("pipeline", 20, 10.0)  # 2 img/s against the forward pass's 10 alone
    advise(r, CFG, "cpu")
    assert r.limit == "pipeline" and "do not overlap" in r.advice[0]
    assert any("--img-size" in tip for tip in r.advice[1:])
