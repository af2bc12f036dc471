"""The real command: exit codes and one-line messages of every core error, fast --help/--version."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import h5py
import pytest

from conftest import run


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_version_and_help_do_not_import_torch():
    code = (
        "import sys, time; t = time.perf_counter();"
        "from featdump.cli.commands import app;"
        "sys.argv = ['featdump', '--help'];"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: app()\n"
        "    except SystemExit: pass\n"
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
    t0 = time.perf_counter()
    version = run("--version", check=True)
    assert version.stdout.strip().startswith("featdump ")
    assert time.perf_counter() - t0 < 5  # generous for a loaded CI box; ~0.1 s here
    for command in ("inspect", "extract"):
        help_text = run(command, "--help", check=True).stdout
        assert "Example:" in help_text


def test_inspect_table_and_json(cli):
    table = cli("inspect", "resnet18")
    assert table.exit_code == 0
    for text in ("layer1", "64×56×56", "512×7×7", "bicubic"):
        assert text in table.stdout
    js = cli("inspect", "resnet18", "--json", "--out-indices", "1,-1", "--img-size", "256x320")
    data = json.loads(js.stdout)
    assert [l["module"] for l in data["layers"]] == ["layer1", "layer4"]
    assert data["layers"][1]["shape"] == [512, 8, 10]
    assert data["data_config"]["input_size"] == [3, 256, 320]
    assert data["layers"][0]["mb_per_image_float32"] == pytest.approx(64 * 64 * 80 * 4 / 2**20)


def test_inspect_output_stride_and_vit(cli):
    data = json.loads(cli("inspect", "resnet18", "--output-stride", "8", "--json").stdout)
    assert [l["reduction"] for l in data["layers"]] == [2, 4, 8, 8, 8]
    assert data["layers"][-1]["shape"] == [512, 28, 28]
    vit = json.loads(cli("inspect", "vit_tiny_patch16_224", "--json").stdout)
    assert [l["module"] for l in vit["layers"]] == ["blocks.9", "blocks.10", "blocks.11"]
    assert vit["layers"][0]["shape"] == [192, 14, 14]
    assert "--out-indices all lists all 12 levels" in cli("inspect", "vit_tiny_patch16_224").stdout
    every = json.loads(cli("inspect", "vit_tiny_patch16_224", "--json", "--out-indices", "all").stdout)
    assert every["out_indices"] == list(range(12)) and [l["module"] for l in every["layers"]] == [f"blocks.{i}" for i in range(12)]
    assert "lists all" not in cli("inspect", "vit_tiny_patch16_224", "--out-indices", "all").stdout


def test_extract_out_indices_all(cli, photos, tmp_path):
    out = tmp_path / "all.h5"
    res = cli("extract", "resnet18", str(photos / "coffee.jpg"), "-o", str(out), "--no-pretrained", "--img-size", "64",
              "--out-indices", "all", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:  # every level of timm's feature_info, recorded as the levels it resolved to
        assert list(f.attrs["out_indices"]) == [0, 1, 2, 3, 4]
        assert [f["features"][name].shape[1] for name in ("act1", "layer1", "layer2", "layer3", "layer4")] == [64, 64, 128, 256, 512]


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_inspect_images_fits_80_columns() -> None:
    p = run("inspect", "resnet50", "--images", "1000000", "--dtype", "float16", env={"COLUMNS": "80"}, check=True)
    assert all(len(line) <= 80 for line in p.stdout.splitlines()), p.stdout
    header = next(line for line in p.stdout.splitlines() if "index" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["index", "module", "channels", "stride", "shape", "MiB f16", "total"]
    assert "1.46 TiB" in p.stdout  # act1: 64×112×112 float16 × 10⁶ images


@pytest.mark.parametrize(
    "args,needle",
    [
        (["inspect", "resnet5O"], "unknown model 'resnet5O'; did you mean: resnet50"),
        (["inspect", "resnet18", "--out-indices", "5"], "valid levels are 0..4 (or -5..-1): 0=act1, 1=layer1"),
        (["inspect", "resnet18", "--out-indices", "a,b"], "--out-indices takes whole numbers"),
        (["inspect", "resnet18", "--out-indices", "-1,4"], "names level 4 (layer4) twice"),
        (["inspect", "vit_tiny_patch16_224", "--output-stride", "16"], "cannot run at --output-stride 16"),
        (["inspect", "resnet18", "--output-stride", "4"], "--output-stride must be one of 8|16|32"),
        (["inspect", "resnet18", "--img-size", "big"], "--img-size takes SIZE or HEIGHTxWIDTH"),
    ],
)
def test_usage_errors_exit_2_with_one_line(cli, args, needle):
    result = cli(*args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_extract_usage_errors(cli, photos, tmp_path, random_checkpoint):
    out = tmp_path / "o.h5"
    missing = cli("extract", "resnet18", str(tmp_path / "nope"), "-o", str(out), "--no-pretrained")
    assert missing.exit_code == 2 and "input not found" in missing.stderr
    cuda = cli("extract", "resnet18", str(photos), "-o", str(out), "--no-pretrained", "--device", "cuda")
    if cuda.exit_code != 0:  # on a machine without a GPU
        assert cuda.exit_code == 2 and "no CUDA GPU" in cuda.stderr
    out.unlink(missing_ok=True)
    wrong = cli("extract", "resnet18", str(photos), "-o", str(out), "--checkpoint", str(random_checkpoint("convnext_atto")))
    assert wrong.exit_code == 2 and "checkpoint does not fit resnet18" in wrong.stderr
    assert not out.exists()
    both = cli("extract", "resnet18", str(photos), "-o", str(out), "--resume", "--overwrite")
    assert both.exit_code == 2


def test_existing_output_is_refused_byte_identical(cli, photos, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"precious data, not even HDF5")
    before = _sha(out)
    r = cli("extract", "resnet18", str(photos), "-o", str(out), "--no-pretrained")
    assert r.exit_code == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr
    assert _sha(out) == before


@pytest.mark.slow
def test_pretrained_offline_without_cache_says_what_to_do(photos, tmp_path):
    r = run("extract", "resnet18", str(photos), "-o", str(tmp_path / "o.h5"), env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    line = r.stderr.strip()
    assert line.count("\n") == 0
    assert "--checkpoint" in line and "featdump fetch resnet18" in line
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.slow
def test_extract_real_process_writes_spec_layout(photos, tmp_path, random_checkpoint):
    out = tmp_path / "feats.h5"
    r = run(
        "extract", "resnet18", str(photos), "-o", str(out), "--checkpoint", str(random_checkpoint("resnet18")),
        "--out-indices", "2,-1", "--img-size", "96",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "layer2" in r.stdout and "8 images written, 0 failed" in r.stdout  # the summary table
    with h5py.File(out) as f:
        a = f.attrs
        for key in (
            "format", "format_version", "featdump_version", "model", "weights", "timm_version", "torch_version",
            "input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode", "out_indices", "layers",
            "output_stride", "pool", "dtype", "created", "command", "shard", "num_images", "complete",
        ):  # fmt: skip
            assert key in a, key
        assert a["format"] == "featdump" and int(a["format_version"]) == 1
        assert list(a["out_indices"]) == [2, 4] and list(a["shard"]) == [0, 1]
        assert a["created"].endswith("Z") and a["command"].startswith("featdump extract resnet18")
        assert f["features/layer2"].shape == (8, 128, 12, 12)
        ds = f["features/layer4"]
        assert (ds.attrs["module"], int(ds.attrs["index"]), int(ds.attrs["channels"]), int(ds.attrs["reduction"])) == (
            "layer4", 4, 512, 32,
        )  # fmt: skip
        assert ds.maxshape[0] is None and ds.chunks[0] >= 1
        assert f["failed/paths"].shape == (0,) and f["failed/errors"].shape == (0,)
        assert h5py.check_string_dtype(f["paths"].dtype).encoding == "utf-8"


@pytest.mark.slow
def test_pretrained_tags_and_hub_names(cli):
    ok = cli("inspect", "resnet50.a1_in1k", "--json")
    assert ok.exit_code == 0 and '"crop_pct": 0.95' in ok.stdout
    bad = cli("inspect", "resnet50.bogus")
    assert bad.exit_code == 2 and "unknown pretrained tag 'bogus' for resnet50; its tags: a1_in1k" in bad.stderr
    hub = cli("inspect", "hf-hub:timm/resnet18.a1_in1k")  # offline, nothing cached
    assert hub.exit_code == 1 and "featdump fetch hf-hub:timm/resnet18.a1_in1k" in hub.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50.a1_in1k", "vit_tiny_patch16_224", "inception_v3", "fastvit_t8"])
def test_data_config_is_timms(model):
    """The stored preprocessing is what timm resolves for the full pretrained model."""
    import dataclasses

    import timm
    import torch
    from timm.data import resolve_data_config

    from featdump.model.backbone import describe

    with torch.device("meta"):
        full = timm.create_model(model)
    want = resolve_data_config({}, model=full)
    got = dataclasses.asdict(describe(model).data)
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode"):
        assert tuple(got[key]) == tuple(want[key]) if isinstance(want[key], tuple) else got[key] == want[key], key


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_not_lost(tmp_path, photos):
    """A SIGINT while torch/timm load is remembered (third-party code cannot swallow it): exit 130, no file."""
    import signal
    import time

    out = tmp_path / "o.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "featdump", "extract", "resnet18", str(photos), "-o", str(out), "--no-pretrained"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "during start-up; nothing was written" in err or "resume with --resume" in err
    assert err.count("\n") == 1 and "Traceback" not in err
