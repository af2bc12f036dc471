"""``--tiles`` files read from tar shards and tables, an image listed twice: ``verify`` and ``viz``
find each row's image and tile (an image's tiles are several rows of one input)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import featdump
from featdump.run.verify import verify_file

from conftest import run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tile_inputs")
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (200, 72), "b.png": (64, 64)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _extract(inputs: Path, out: Path, ckpt: Path) -> None:
    featdump.extract("resnet18", inputs, out, checkpoint=ckpt, out_indices=(4,), pool="avg", tiles="64:48", device="cpu", quiet=True)


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
@pytest.mark.parametrize("kind", ["table", "tar"])
def test_verify_and_viz_find_each_tiles_image(kind: str, folder: Path, random_checkpoint: Any, tmp_path: Path) -> None:
    if kind == "table":  # a.png twice: its second copy's rows come after b.png's
        inputs = tmp_path / "list.csv"
        inputs.write_text("path\n" + "".join(f"{folder / n}\n" for n in ("a.png", "b.png", "a.png")))
    else:
        inputs = tmp_path / "shard-0.tar"
        with tarfile.open(inputs, "w") as tar:
            for n in ("a.png", "b.png"):
                tar.add(folder / n, arcname=n)
    made = tmp_path / "t.h5"
    _extract(inputs, made, random_checkpoint("resnet18"))
    with featdump.open(made) as f:
        n = f.num_images
        assert n == 8 * (1 + (kind == "table")) + 1  # a.png: 2 x 4 tiles of 64 at 48 steps
        row = n - 1  # table: the last tile of a.png's second copy
        box = f.tiles(row).tolist()
    report = verify_file(made, n=n, device="cpu")
    assert report.ok and len(report.rows) == n, report
    res = run("viz", str(made), "-o", str(tmp_path / "v.png"), "--image", str(row))
    assert res.returncode == 0 and "not found" not in res.stdout + res.stderr, res.stdout + res.stderr
    from featdump.viz import LABEL_H, PAD, TILE

    drawn = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))[PAD + LABEL_H : PAD + LABEL_H + TILE, PAD : PAD + TILE]
    name = "a.png" if kind == "table" else "b.png"
    tile = Image.open(folder / name).convert("RGB").crop((box[1], box[0], box[3], box[2]))
    np.testing.assert_array_equal(drawn, np.asarray(tile.resize((TILE, TILE), Image.Resampling.BICUBIC)))


@pytest.mark.slow  # several seconds: the whole suite runs it
def test_export_carries_each_tiles_box(folder: Path, random_checkpoint: Any, tmp_path: Path) -> None:
    """Rows of one image differ only by their box: the parquet metadata has y0, x0, y1, x1 and zarr a tiles array."""
    import pyarrow.parquet as pq
    import zarr

    made = tmp_path / "t.h5"
    _extract(folder, made, random_checkpoint("resnet18"))
    with featdump.open(made) as f:
        boxes = f.tiles()
    assert run("export", str(made), "-o", str(tmp_path / "npy")).returncode == 0
    table = pq.read_table(tmp_path / "npy/layer4/metadata/part-00000.parquet").to_pydict()
    np.testing.assert_array_equal(np.array([table[k] for k in ("y0", "x0", "y1", "x1")]).T, boxes)
    assert run("export", str(made), "-o", str(tmp_path / "z"), "--format", "zarr").returncode == 0
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "z", mode="r")["tiles"][:], boxes)


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_tiles_a_vits_patches_do_not_tile_name_the_flag(folder: Path, tmp_path: Path) -> None:
    res = run("extract", "vit_tiny_patch16_224", str(folder), "-o", str(tmp_path / "v.h5"), "--no-pretrained", "--tiles", "100")
    assert res.returncode == 2, res.stderr
    assert "100x100 (--img-size or --tiles) is not a multiple of vit_tiny_patch16_224's patch size" in res.stderr
    assert "nearest valid sizes: 96 or 112" in res.stderr


def test_like_and_verify_read_images_with_the_runs_max_image_pixels(folder: Path, random_checkpoint: Any, tmp_path: Path) -> None:
    """A slide needs --max-image-pixels raised: the file records it, so --like (and verify) read what
    the run read; here a lowered bound refuses a.png (200 x 72) in both runs."""
    made, again = tmp_path / "t.h5", tmp_path / "again.h5"
    featdump.extract("resnet18", folder, made, checkpoint=random_checkpoint("resnet18"), out_indices=(4,), pool="avg",
                     tiles=64, max_image_pixels=10_000, device="cpu", quiet=True)  # fmt: skip
    featdump.extract("resnet18", folder, again, like=made, quiet=True)
    for path in (made, again):
        with featdump.open(path) as f:
            assert f.paths == ["b.png"] and [p for p, _ in f.failed] == ["a.png"], path
            assert f.meta["max_image_pixels"] == 10_000
    assert verify_file(made, n=1, device="cpu").ok


def test_a_big_image_at_stride_1_is_not_listed_tile_by_tile(folder: Path, random_checkpoint: Any, tmp_path: Path) -> None:
    """--tiles 8:1 on a 1500 x 1500 image has 1493^2 = 2.2 million tiles: they are counted, never
    listed (a list of corners took ~150 MB here, and ~30 GB for a 20,000 x 20,000 slide)."""
    import tracemalloc

    from featdump.data.tiles import tile_view

    made = tmp_path / "t.h5"
    _extract(folder, made, random_checkpoint("resnet18"))
    with featdump.open(made) as f:
        attrs = {**f.meta, "tiles": [8, 1]}
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1500, 1500, 3), dtype=np.uint8))
    tracemalloc.start()
    try:
        tile = tile_view(attrs, big, 1493 * 1493 - 2)  # the last row's last tile but one
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20, f"{peak / 2**20:.0f} MiB"
    np.testing.assert_array_equal(np.asarray(tile), np.asarray(big)[1492:1500, 1491:1499])


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_viz_cuts_a_tile_with_the_runs_max_image_pixels(tmp_path: Path) -> None:
    """2400 x 150 at --tile-scale 16 is 92 million pixels, over Pillow's bound: the run raised it, viz
    draws the tile (it drew "cannot read input: ValueError")."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (15, 240, 3), dtype=np.uint8)).resize((2400, 150)).save(folder / "m.png")
    made = tmp_path / "t.h5"
    featdump.extract("mobilenetv3_small_050", folder, made, pretrained=False, tiles=2400, tile_scale=16, max_image_pixels=100_000_000,
                     out_indices=(0,), pool="avg", batch_size=2, device="cpu", quiet=True)  # fmt: skip
    res = run("viz", str(made), "-o", str(tmp_path / "v.png"), "--image", "3")
    assert res.returncode == 0 and "cannot read" not in res.stdout + res.stderr, res.stdout + res.stderr
    from featdump.viz import LABEL_H, PAD, TILE

    drawn = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))[PAD + LABEL_H : PAD + LABEL_H + TILE, PAD : PAD + TILE]
    assert (drawn == 230).all(axis=2).mean() < 0.5, "the grey placeholder, not the tile"
