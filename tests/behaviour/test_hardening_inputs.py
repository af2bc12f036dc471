"""Hostile inputs through the real command: resize bombs, undecodable and control-character
file names, NaN weights, overlapping INPUTs, oversized CPU grants, broken configs and checkpoints.

Every attack file is generated here (no binaries in the repository)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run
from faultkit import FAST, MODEL, read_rows

FAST = (*FAST, "--no-pretrained")  # offline: seeded random weights


def _image(path: Path | bytes, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        Image.fromarray(rng.integers(0, 256, (30, 34, 3), dtype=np.uint8)).save(fh, "PNG")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        _image(d / f"good{i}.png", i)
    return d


# --------------------------------------------------------------------------- 2. resize bombs


_MEASURED = """
import resource, subprocess, sys
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a safety net: the bomb alone needs ~6 GB
p = subprocess.run([sys.executable, "-m", "featdump", *sys.argv[1:]], preexec_fn=limit, capture_output=True, text=True)
sys.stderr.write(p.stderr)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
def test_a_resize_bomb_is_a_failed_record_decided_before_resizing(folder: Path, tmp_path: Path) -> None:
    Image.new("L", (1, 20000)).save(folder / "bomb.png", optimize=True)  # ~165 bytes
    assert (folder / "bomb.png").stat().st_size < 1000
    out = tmp_path / "o.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, "extract", MODEL, str(folder), "-o", str(out), *FAST],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    rc, maxrss_kb = (int(v) for v in proc.stdout.split())
    assert rc == 0, proc.stderr
    assert maxrss_kb < 1_500_000, f"peak RSS {maxrss_kb} kB"  # the resize would have taken ~6 GB
    rows = read_rows(out)
    assert rows["num_images"] == 3
    assert rows["failed"] == ["bomb.png"]
    assert "extreme aspect ratio (1x20000" in rows["errors"][0]


def test_a_resized_size_over_the_pixel_limit_is_a_failed_record(folder: Path, tmp_path: Path, cli) -> None:
    # 40x4000 decodes to 160,000 pixels (under the limit) but resizes to 67x6700 = 448,900 at --img-size 64 (crop_pct 0.95)
    Image.new("RGB", (40, 4000)).save(folder / "tall.png")
    out = tmp_path / "o.h5"
    res = cli("extract", MODEL, str(folder), "-o", str(out), *FAST, "--max-image-pixels", "400000")
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert rows["failed"] == ["tall.png"]
    why = rows["errors"][0]
    assert "resizing 40x4000 would make 67x6700 = 448900 pixels (> 400000)" in why


# --------------------------------------------------------------------------- 3. names that are not UTF-8


@pytest.mark.slow
def test_an_undecodable_name_is_stored_escaped_and_resumes(folder: Path, tmp_path: Path, cli) -> None:
    raw = os.fsencode(folder)
    _image(raw + b"/bad\xff.png", 7)
    with open(raw + b"/broken\xfe.png", "wb") as fh:
        fh.write(b"not an image")
    out = tmp_path / "o.h5"
    res = cli("extract", MODEL, str(folder), "-o", str(out), *FAST)
    assert res.exit_code == 0, res.output
    rows = read_rows(out)
    assert rows["paths"] == ["bad\\xff.png", "good0.png", "good1.png", "good2.png"]
    assert rows["failed"] == ["broken\\xfe.png"]
    assert np.isfinite(rows["features"][next(iter(rows["features"]))][0]).all()  # the row is usable
    again = cli("extract", MODEL, str(folder), "-o", str(out), *FAST, "--resume")  # same list digest
    assert again.exit_code == 0, again.output
    # an image file given by an undecodable name is stored the same way
    one = tmp_path / "one.h5"
    res = cli("extract", MODEL, os.fsdecode(raw + b"/bad\xff.png"), "-o", str(one), *FAST)
    assert res.exit_code == 0, res.output
    assert read_rows(one)["paths"] == [f"{folder}/bad\\xff.png"]


# --------------------------------------------------------------------------- 8. control characters


def test_control_characters_in_names_are_escaped_for_humans(folder: Path, tmp_path: Path, cli) -> None:
    name = "\x1b[31mred\x07.png"
    (folder / name).write_text("not an image")
    (folder / "good0.png").rename(folder / "\x1b[32mgreen.png")  # a stored row (sorted first)
    out = tmp_path / "o.h5"
    res = cli("extract", MODEL, str(folder), "-o", str(out), "--img-size", "64", "--device", "cpu", "--no-pretrained")
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "\\x1b[31mred\\x07.png" in res.output
    shown = cli("show", str(out))
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\\x1b[31mred\\x07.png" in shown.output
    row = cli("show", str(out), "--layer", "layer4", "--row", "0")  # one map's statistics: title and id
    assert row.exit_code == 0, row.output
    assert "\x1b" not in row.output and "\\x1b[32mgreen.png" in row.output
    exact = json.loads(cli("show", str(out), "--json").output)  # JSON stays exact
    assert exact["failures"][0]["path"] == name
    # error messages too
    bad = cli("extract", MODEL, str(folder / "\x1b]0;title\x07missing.png"), "-o", str(tmp_path / "x.h5"), *FAST)
    assert bad.exit_code == 2
    assert "\x1b" not in bad.output and "\\x1b]0;title\\x07missing.png" in bad.output


def test_printable_escapes() -> None:
    from featdump.text import printable

    assert printable("a\x1b[2Jb\nc\x9b\u202ed\udcff") == "a\\x1b[2Jb\\x0ac\\x9b\\u202ed\\xff"
    assert printable("plain ünïcode/ok.jpg") == "plain ünïcode/ok.jpg"


# --------------------------------------------------------------------------- 12. NaN weights


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in timm.create_model(MODEL, pretrained=False).state_dict().items()}
    sd["layer3.0.conv1.weight"][0, 0, 0, 0] = float("nan")  # layers 3, 4 (and 5) turn NaN, 1-2 stay finite
    path = tmp_path_factory.mktemp("nan") / "nan.safetensors"
    save_file(sd, str(path))
    return path


@pytest.mark.slow
def test_nan_weights_warn_per_layer_and_fail_under_strict(folder: Path, tmp_path: Path, nan_checkpoint: Path) -> None:
    args = ["extract", MODEL, str(folder), "--checkpoint", str(nan_checkpoint), *FAST]
    proc = run(*args, "-o", str(tmp_path / "a.h5"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith("featdump: warning: layer ") for line in lines), proc.stderr  # nothing else under -q
    warned = [line.split()[3].rstrip(":") for line in lines]
    assert warned == ["layer3", "layer4"]
    assert "non-finite value(s) (NaN/inf)" in lines[0]
    strict = run(*args, "-o", str(tmp_path / "b.h5"), "--strict")
    assert strict.returncode == 1
    assert "layer(s) hold NaN/inf values (--strict)" in strict.stderr


def test_the_summary_carries_nonfinite_counts(folder: Path, tmp_path: Path, nan_checkpoint: Path) -> None:
    import featdump

    s = featdump.extract(
        MODEL, folder, tmp_path / "o.h5", checkpoint=str(nan_checkpoint), img_size="64", device="cpu", quiet=True
    )
    counts = {layer.name: layer.nonfinite for layer in s.layers}
    assert counts["layer1"] == counts["layer2"] == 0
    assert counts["layer4"] == 3 * int(np.prod(s.layers[-1].shape))  # every value of every image


# --------------------------------------------------------------------------- 13. overlapping INPUTs


def test_a_folder_and_a_file_inside_it_is_a_usage_error(folder: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "o.h5"
    inner = folder / "good1.png"
    res = cli("extract", MODEL, str(folder), str(inner), "-o", str(out), *FAST)
    assert res.exit_code == 2
    assert f"{inner} is also in folder {folder}" in res.output
    assert not out.exists()
    link = tmp_path / "link.png"  # through a symlink: the real paths decide
    link.symlink_to(inner)
    res = cli("extract", MODEL, str(link), str(folder), "-o", str(out), *FAST)
    assert res.exit_code == 2 and "link.png is also in folder" in res.output
    listed = tmp_path / "list.txt"  # a list naming it
    listed.write_text(f"{inner}\n")
    res = cli("extract", MODEL, str(folder), str(listed), "-o", str(out), *FAST)
    assert res.exit_code == 2 and "(listed in" in res.output
    (folder / "sub").mkdir()
    _image(folder / "sub" / "x.png")
    res = cli("extract", MODEL, str(folder), str(folder / "sub"), "-o", str(out), *FAST)
    assert res.exit_code == 2 and "is also inside folder" in res.output
    # a file outside the folder is fine, and so is a hidden one the walk skips
    other = tmp_path / "other.png"
    _image(other)
    res = cli("extract", MODEL, str(folder / "sub"), str(other), "-o", str(out), *FAST)
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------- 14. CPU grants beyond affinity


def test_a_cpu_grant_beyond_the_affinity_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from featdump.options import ExtractConfig
    from featdump.run.device import tune
    from featdump.run.placement import placement_from_env

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4096")
    t = tune(torch.device("cpu"), ExtractConfig(model=MODEL, inputs=("x",), output="o.h5"), placement_from_env())
    assert t.threads <= cores and t.workers <= cores


@pytest.mark.slow
def test_slurm_cpus_per_task_4096_runs_within_the_affinity(folder: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, featdump
        s = featdump.extract({MODEL!r}, {str(folder)!r}, {str(tmp_path / 'o.h5')!r}, img_size="64", device="cpu", quiet=True, pretrained=False)
        print(s.threads, s.workers, len(os.sched_getaffinity(0)))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLURM_CPUS_PER_TASK": "4096"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    threads, workers, cores = (int(v) for v in proc.stdout.split())
    assert 1 <= threads <= cores and workers <= cores


# --------------------------------------------------------------------------- 11. configs and checkpoints


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"a = " + b"[" * 10000 + b"]" * 10000 + b"\n", "nested too deeply"),
        (b"x = " + b"{ y = " * 10000 + b"1" + b" }" * 10000 + b"\n", "nested too deeply"),
        (b"pool = 'avg'\n# caf\xe9\n", "not UTF-8 text"),
    ],
)
def test_a_hostile_config_is_a_usage_error(folder: Path, tmp_path: Path, cli, content: bytes, why: str) -> None:
    conf = tmp_path / "job.toml"
    conf.write_bytes(content)
    res = cli("extract", MODEL, str(folder), "-o", str(tmp_path / "o.h5"), *FAST, "--config", str(conf))
    assert res.exit_code == 2, res.output
    assert f"config file {conf} is not valid TOML: " in res.output and why in res.output
    assert "Traceback" not in res.output


def _checkpoints(tmp_path: Path) -> list[tuple[Path, str]]:
    import torch

    text = tmp_path / "notes.pth"
    text.write_text("epoch 3, best top-1 71.2\n")
    arrays = tmp_path / "arrays.pth"
    torch.save({"conv1.weight": np.zeros((64, 3, 7, 7), dtype=np.float32)}, arrays)
    folder = tmp_path / "ckpt.pth"
    folder.mkdir()
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    return [
        (text, f"{text} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle"),
        (arrays, (f"refused checkpoint {arrays}: it holds numpy arrays, which need unpickling code; "
                  "re-save it with torch tensors (or as .safetensors)")),
        (folder, f"checkpoint {folder} is a folder, not a file"),
        (fifo, f"checkpoint {fifo} is not a regular file"),
    ]  # fmt: skip


@pytest.mark.slow
def test_bad_checkpoints_are_one_line_usage_errors(folder: Path, tmp_path: Path, cli) -> None:
    for ckpt, message in _checkpoints(tmp_path):
        res = cli("extract", MODEL, str(folder), "-o", str(tmp_path / "o.h5"), *FAST, "--checkpoint", str(ckpt))
        assert res.exit_code == 2, (ckpt, res.output)
        assert message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_float16_overflow_is_counted_and_said(folder: Path, tmp_path: Path) -> None:
    """Finite float32 activations past float16's ±65504 are stored as inf: the CPU's sum filter counts
    every one of them, and the message names the storage dtype, not only the weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    import featdump
    from featdump.errors import FeatdumpError

    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in timm.create_model(MODEL, pretrained=False).state_dict().items()}
    sd["bn1.weight"] *= 1e5  # the stem's scale carried by every residual: some values pass 65504
    sd["bn1.bias"] *= 1e5
    save_file(sd, str(ckpt := tmp_path / "big.safetensors"))
    out = tmp_path / "o.h5"
    with pytest.raises(FeatdumpError, match=r"--dtype float32: float16 holds nothing past ±65504"):
        featdump.extract(MODEL, folder, out, checkpoint=str(ckpt), img_size="64", dtype="float16", strict=True, device="cpu", quiet=True)
    s = featdump.extract(MODEL, folder, out, checkpoint=str(ckpt), img_size="64", dtype="float16", device="cpu", quiet=True, overwrite=True)
    with featdump.open(out) as f:
        stored = {layer.name: int((~np.isfinite(f.numpy(layer.name))).sum()) for layer in s.layers}
    assert {layer.name: layer.nonfinite for layer in s.layers} == stored and any(stored.values()), stored
