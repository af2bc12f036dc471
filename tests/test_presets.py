"""``--config FILE.toml`` and the presets in configs/: every preset resolves, builds and runs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from featdump import configure as config
from featdump.model.backbone import describe

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "configs").glob("*.toml"))
# Each preset, run with a small model of the same family (the MODEL argument wins over the file's model).
SMALL = {"resnet50-fpn": "resnet18", "vit-probe": "vit_tiny_patch16_224", "embeddings": "convnext_atto"}


def test_every_preset_is_covered() -> None:
    assert {p.stem for p in PRESETS} == set(SMALL)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_resolves_and_builds(preset: Path) -> None:
    values = config.load_toml(preset)
    cfg = config.resolve({"inputs": ("photos",), "output": "out.h5"}, values)
    desc = describe(cfg.model, cfg.out_indices, cfg.output_stride, cfg.img_size, layers=cfg.layers, tokens=cfg.tokens)
    assert desc.layers
    if cfg.layers:
        assert [layer.name for layer in desc.layers] == list(cfg.layers)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_runs(cli, preset: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    small = SMALL[preset.stem]
    res = cli("extract", small, str(photos / "coffee.jpg"), str(photos / "camera.jpg"), "-o", str(out),
              "--config", str(preset), "--no-pretrained", "--img-size", "64", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    values = config.load_toml(preset)
    with h5py.File(out) as f:
        assert f.attrs["model"] == small  # the command line wins over the file's model
        assert f.attrs["dtype"] == values.get("dtype", "float32")
        assert f.attrs["pool"] == values.get("pool", "none")
        names = list(f["features"])
        shapes = {n: f["features"][n].shape for n in names}
    if preset.stem == "resnet50-fpn":
        assert names == ["layer1", "layer2", "layer3", "layer4"]
        assert [s[1] for s in shapes.values()] == [64, 128, 256, 512]
        info = json.loads(cli("show", str(out), "--json").stdout)
        assert all("zstd" in d["compression"] for d in info["datasets"])
        assert {d["dtype"] for d in info["datasets"]} == {"float16"}
    elif preset.stem == "vit-probe":
        assert names == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
        assert set(shapes.values()) == {(2, 192)}
    else:
        assert len(names) == 1 and shapes[names[0]] == (2, 320)


def test_flags_win_over_the_file(cli, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.h5"
    res = cli("extract", "resnet18", str(photos / "coffee.jpg"), "-o", str(out), "--config",
              str(ROOT / "configs" / "resnet50-fpn.toml"), "--no-pretrained", "--img-size", "64", "--quiet",
              "--dtype", "float32", "--out-indices", "2")  # fmt: skip
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f.attrs["dtype"] == "float32" and list(f["features"]) == ["layer2"]
        assert f.attrs["compression"] == "zstd"  # not given on the command line: from the file


def test_unknown_key_and_bad_values(cli, photos: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('pool = "avg"\nbogus_key = 3\n')
    args = ["extract", "resnet18", str(photos / "coffee.jpg"), "-o", str(tmp_path / "o.h5"), "--config", str(bad)]
    res = cli(*args)
    assert res.exit_code == 2 and "unknown key 'bogus_key'" in res.stderr
    bad.write_text('pool = "median"\n')
    res = cli(*args)
    assert res.exit_code == 2 and "--pool must be one of none|avg|max, not 'median'" in res.stderr
    bad.write_text("pool = \n")
    res = cli(*args)
    assert res.exit_code == 2 and "is not valid TOML" in res.stderr
    res = cli(*args[:-1], str(tmp_path / "missing.toml"))
    assert res.exit_code == 2 and "config file not found" in res.stderr
    assert not (tmp_path / "o.h5").exists()
