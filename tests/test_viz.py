"""``featdump viz``: the picture's size, that it is not blank, and how images and layers are chosen."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featdump.viz import PAD, pca_rgb


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    """Spatial maps (resnet18 levels 1,2) and a pooled file, over 3 photos in a folder of their own."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    root = tmp_path_factory.mktemp("viz")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for name in ("astronaut.jpg", "coffee.jpg"):
        shutil.copy(photos / name, imgs / name)
    shutil.copy(photos / "chelsea.jpg", imgs / "sub" / "chelsea.jpg")
    runner = CliRunner()
    common = ["resnet18", str(imgs), "--no-pretrained", "--img-size", "64", "--quiet"]
    maps, pooled = root / "maps.h5", root / "pooled.h5"
    saved = sys.argv
    try:
        for out, extra in ((maps, ["--out-indices", "1,2"]), (pooled, ["--out-indices", "-1", "--pool", "avg"])):
            args = ["extract", *common, "-o", str(out), *extra]
            sys.argv = ["featdump", *args]  # the command line a real run records (viz finds INPUT there)
            res = runner.invoke(app, args)
            assert res.exit_code == 0, res.output
    finally:
        sys.argv = saved
    return {"maps": maps, "pooled": pooled, "imgs": imgs}


def _not_blank(path: Path) -> np.ndarray:
    arr = np.asarray(Image.open(path).convert("RGB"))
    assert arr.std() > 20, "picture is (nearly) one colour"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 200, "picture has too few colours"
    return arr


def test_viz_default_picture(cli, feats: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "maps.png"
    res = cli("viz", str(feats["maps"]), "-o", str(out), "--tile", "96")
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        size = im.size
    cols = 1 + 2  # input + layer1 + layer2
    assert size[0] == PAD + cols * (96 + PAD)
    assert f"wrote {out} ({size[0]}x{size[1]}): 3 image(s) × 2 layer(s)" in res.stdout
    assert res.stderr == ""  # every input was found (via the INPUT folder in the recorded command)
    arr = _not_blank(out)
    # the feature tiles themselves carry colour, not just the input photo
    tiles = arr[:, PAD + 96 + PAD :]
    assert tiles.std() > 20


def test_viz_choose_images_and_layers(cli, feats: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "one.png"
    res = cli("viz", str(feats["maps"]), "-o", str(out), "--image", "chelsea.jpg", "--image", "0",
              "--layer", "layer2", "--tile", "64")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 image(s) × 1 layer(s)" in res.stdout
    with Image.open(out) as im:
        assert im.size[0] == PAD + 2 * (64 + PAD)
    _not_blank(out)
    bad = cli("viz", str(feats["maps"]), "-o", str(out), "--layer", "layer9")
    assert bad.exit_code == 2 and "--layer 'layer9' is not in" in bad.stderr and "layer1, layer2" in bad.stderr
    bad = cli("viz", str(feats["maps"]), "-o", str(out), "--image", "7")
    assert bad.exit_code == 2 and "rows 0..2" in bad.stderr
    bad = cli("viz", str(feats["maps"]), "-o", str(out), "--image", "dog.jpg")
    assert bad.exit_code == 2 and "not a stored path" in bad.stderr
    bad = cli("viz", str(feats["maps"]), "-o", str(tmp_path / "pic.jpg"))
    assert bad.exit_code == 2 and "PNG" in bad.stderr


def test_viz_pooled_strip_and_missing_inputs(cli, feats: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "pooled.h5"
    moved.parent.mkdir()
    shutil.copy(feats["pooled"], moved)
    hidden = tmp_path / "hidden"
    shutil.move(str(feats["imgs"]), hidden)  # the recorded INPUT folder is gone
    try:
        out = tmp_path / "pooled.png"
        res = cli("viz", str(moved), "-o", str(out))
        assert res.exit_code == 0, res.output
        assert "input image not found: astronaut.jpg" in res.stderr and "--root" in res.stderr
        _not_blank(out)
        res = cli("viz", str(moved), "-o", str(out), "--root", str(hidden), "--quiet")
        assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    finally:
        shutil.move(str(hidden), feats["imgs"])


def test_pca_is_fitted_jointly() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 16, 5, 7)).astype(np.float32)
    maps[1] += 3.0  # the second image differs along every channel: joint PCA must show it
    rgb = pca_rgb(maps)
    assert rgb.shape == (2, 5, 7, 3) and rgb.dtype == np.uint8
    assert abs(float(rgb[0].mean()) - float(rgb[1].mean())) > 30
