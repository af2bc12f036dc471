"""``featdump viz``: the picture's size, that it is not blank, and how images and layers are chosen."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featdump.viz import LABEL_H, PAD, render, select_rows
from featdump.vizdraw import pca_2d, pca_rgb, top_channels


@pytest.fixture(scope="module")
def feats(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    """Spatial maps (resnet18 levels 1,2) and a pooled file, over 3 photos in a folder of their own;
    two pooled layers over all 8 example photos (``many``)."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    root = tmp_path_factory.mktemp("viz")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for name in ("astronaut.jpg", "coffee.jpg"):
        shutil.copy(photos / name, imgs / name)
    shutil.copy(photos / "chelsea.jpg", imgs / "sub" / "chelsea.jpg")
    runner = CliRunner()
    common = ["resnet18", "--no-pretrained", "--img-size", "64", "--quiet"]
    maps, pooled, many = root / "maps.h5", root / "pooled.h5", root / "many.h5"
    saved = sys.argv
    try:
        for out, extra in (
            (maps, [str(imgs), "--out-indices", "1,2"]),
            (pooled, [str(imgs), "--out-indices", "-1", "--pool", "avg"]),
            (many, [str(photos), "--out-indices", "3,-1", "--pool", "avg"]),
        ):
            args = ["extract", *common, "-o", str(out), *extra]
            sys.argv = ["featdump", *args]  # the command line a real run records (viz finds INPUT there)
            res = runner.invoke(app, args)
            assert res.exit_code == 0, res.output
    finally:
        sys.argv = saved
    return {"maps": maps, "pooled": pooled, "many": many, "imgs": imgs}


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


def test_viz_pooled_file_and_missing_inputs(cli, feats: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "pooled.h5"
    moved.parent.mkdir()
    shutil.copy(feats["pooled"], moved)
    hidden = tmp_path / "hidden"
    shutil.move(str(feats["imgs"]), hidden)  # the recorded INPUT folder is gone
    try:
        out = tmp_path / "pooled.png"
        res = cli("viz", str(moved), "-o", str(out))
        assert res.exit_code == 0, res.output
        assert "input image(s) not found, drawn as placeholders: input image astronaut.jpg is gone" in res.stderr
        assert res.stderr.count("\n") == 1 and res.stderr.rstrip().endswith("; pass --root DIR")
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


def test_random_picks_are_reproducible(feats: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    first = render(feats["many"], out, random=3, seed=1, tile=32)
    again = render(feats["many"], out, random=3, seed=1, tile=32)
    assert first.rows == again.rows and len(first.rows) == 3 and first.rows == sorted(first.rows)
    assert all(0 <= r < 8 for r in first.rows) and len(set(first.rows)) == 3
    others = {tuple(select_rows([], None, 8, random=3, seed=s)) for s in range(2, 8)}
    assert len(others | {tuple(first.rows)}) > 1, "every seed picked the same rows"
    assert select_rows([], None, 8, random=3) == select_rows([], None, 8, random=3, seed=0)  # default seed 0
    assert select_rows([], None, 8, random=50, seed=4) == list(range(8))  # more than the file holds: all rows


@pytest.mark.parametrize(
    ("wanted", "random", "seed", "message"),
    [
        (["0"], 2, None, "--random and --image both choose the images"),
        (None, None, 3, "--seed 3 seeds the picks of --random N; give --random N too"),
        (None, 0, None, "--random 0: give how many images to pick"),
        (None, -2, 1, "--random -2: give how many images to pick"),
        (None, 2, -1, "--seed -1: give a seed of 0 or more"),
    ],
)
def test_random_usage_errors(wanted: list[str] | None, random: int | None, seed: int | None, message: str) -> None:
    from featdump.errors import UsageError

    with pytest.raises(UsageError, match=message.replace("-", "\\-")):
        select_rows(["a.jpg"], wanted, 1, random=random, seed=seed)


def test_viz_random_on_the_command_line(cli, feats: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    res = cli("viz", str(feats["maps"]), "-o", str(out), "--random", "2", "--seed", "5", "--tile", "32")
    assert res.exit_code == 0 and "2 image(s) × 2 layer(s)" in res.stdout, res.output
    res = cli("viz", str(feats["maps"]), "-o", str(out), "--random", "2", "--image", "0")
    assert res.exit_code == 2 and "--random and --image" in res.stderr and not res.stdout
    res = cli("viz", str(feats["maps"]), "-o", str(out), "--seed", "1")
    assert res.exit_code == 2 and "give --random N too" in res.stderr
    res = cli("viz", str(feats["maps"]), "-o", str(out), "--random", "0")
    assert res.exit_code == 2 and "--random 0" in res.stderr
    for args in (["viz", str(feats["maps"]), "-o", str(out), "--random", "2", "--seed", "-1"], ["verify", str(feats["maps"]), "--seed", "-1"]):
        res = cli(*args)
        assert res.exit_code == 2 and res.stderr.splitlines() == ["featdump: error: --seed -1: give a seed of 0 or more"], args
    # --overlay picks its rows the same way
    overlay = cli("viz", str(feats["maps"]), "-o", str(out), "--overlay", "--random", "2", "--seed", "5", "--tile", "32")
    assert overlay.exit_code == 0 and "2 image(s) × 2 layer(s)" in overlay.stdout, overlay.output


def test_viz_random_same_rows_with_overlay(feats: dict[str, Path], tmp_path: Path) -> None:
    from featdump.overlay import render_overlay

    plain = render(feats["maps"], tmp_path / "a.png", random=2, seed=7, tile=32)
    over = render_overlay(feats["maps"], tmp_path / "b.png", random=2, seed=7, tile=32)
    assert plain.rows == over.rows == select_rows([], None, 3, random=2, seed=7)


def test_viz_pooled_bars_and_scatter(feats: dict[str, Path], tmp_path: Path) -> None:
    import featdump

    tile = 96
    out = tmp_path / "pooled.png"
    res = render(feats["many"], out, random=5, seed=1, tile=tile)
    assert res.layers == ["layer3", "layer4"] and len(res.rows) == 5
    band = tile + LABEL_H // 2 + PAD
    assert res.height == PAD + LABEL_H + (5 + 1) * band  # one more row: the PCA scatter panels
    arr = np.asarray(Image.open(out).convert("RGB")).astype(int)
    for c in (1, 2):  # every pooled tile (bars) and the scatter panel below them carry a picture
        x = PAD + c * (tile + PAD)
        for r in range(6):
            y = PAD + LABEL_H + r * band
            cell = arr[y : y + tile, x : x + tile]
            assert cell.std() > 20, f"pooled panel row {r} column {c} is (nearly) one colour"
    # tiles of different images differ (each its own channels and colour)
    y0, y1 = PAD + LABEL_H, PAD + LABEL_H + band
    x = PAD + tile + PAD
    assert np.abs(arr[y0 : y0 + tile, x : x + tile] - arr[y1 : y1 + tile, x : x + tile]).mean() > 5
    with featdump.open(feats["many"]) as f:
        vectors = f.numpy("layer4", res.rows)
    xy, share = pca_2d(vectors)
    assert xy.shape == (5, 2) and 0 < share[1] <= share[0] <= 1
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)[np.triu_indices(5, 1)]
    assert gaps.min() > 1e-6 * gaps.max(), "distinct vectors share a dot"


def test_pca_2d_is_deterministic_and_sign_fixed() -> None:
    rng = np.random.default_rng(3)
    v = rng.gamma(2.0, size=(6, 32))
    v[0] += 4.0  # a long tail on PC1
    xy, share = pca_2d(v)
    np.testing.assert_allclose(pca_2d(-v)[0], xy, atol=1e-9)  # a flipped input draws the same picture
    np.testing.assert_allclose(pca_2d(v[:, ::-1])[0], xy, atol=1e-9)  # channel order does not matter
    assert xy[0, 0] == xy[:, 0].max() > 0  # the larger tail is positive
    assert pca_2d(v[:1])[0].tolist() == [[0.0, 0.0]]  # one image: the mean
    two, _ = pca_2d(v[:2])
    assert np.abs(two[:, 1]).max() < 1e-9 and two[0, 0] != two[1, 0]  # two images: a line


def test_top_channels() -> None:
    v = np.array([[0.1, -3.0, 2.0, 2.0], [5.0, 0.0, 0.0, -1.0]])
    assert top_channels(v, 3).tolist() == [[1, 2, 3], [0, 3, 1]]
    assert top_channels(v, 9).shape == (2, 4)


def test_token_rows_drawn_as_maps_on_their_grid() -> None:
    """Tokens (K, T, D) become (K, D, H, W) maps on the stored grid, else on a square grid when the
    patch tokens make one; prefix tokens dropped; otherwise, and for --tokens both's prefix part, the
    token mean."""
    from featdump.viz import as_maps

    data = np.arange(2 * 7 * 3, dtype="f4").reshape(2, 7, 3)  # 1 prefix + 6 patch tokens of 3 dims
    kind, maps = as_maps(data, {"num_prefix_tokens": 1, "grid": [2, 3]})
    assert kind == "map" and maps.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(maps[1, :, 1, 2], data[1, 6])  # row 1, column 2: the last patch token
    kind, maps = as_maps(data[:, :5], {"num_prefix_tokens": 1})  # 4 patch tokens: a 2x2 square
    assert kind == "map" and maps.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(maps[0, :, 0, 1], data[0, 2])
    kind, vec = as_maps(data, {"num_prefix_tokens": 1})  # 6 patch tokens, no grid: not square
    assert kind == "vector"
    np.testing.assert_allclose(vec, data.mean(axis=1))
    kind, vec = as_maps(data[:, :4], {"part": "prefix", "num_prefix_tokens": 4})
    assert kind == "vector" and vec.shape == (2, 3)


def test_overlay_of_a_file_without_geometry_is_a_usage_error(cli, feats: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    import h5py

    bare = tmp_path / "bare.h5"
    shutil.copy(feats["maps"], bare)
    with h5py.File(bare, "r+") as h5:
        del h5["geometry"]
    r = cli("viz", str(bare), "-o", str(tmp_path / "o.png"), "--overlay")
    assert r.exit_code == 2 and "holds no /geometry" in r.output, r.output


def test_an_image_stored_in_several_rows_is_named_by_row() -> None:
    """A --tiles file stores an image's path once per tile: --image PATH names those rows instead of
    drawing the first tile as if it were the image."""
    from featdump.errors import UsageError

    paths = ["a.jpg"] * 7 + ["b.jpg"]
    with pytest.raises(UsageError, match=r"--image 'a.jpg' matches rows 0, 1, 2, 3, 4 and 2 more; give a row number"):
        select_rows(paths, ["a.jpg"], 8)
    assert select_rows(paths, ["b.jpg", "3"], 8) == [7, 3]
