"""Commands on ragged files: show, merge (virtual and --copy), export --pool, and the refusals of
exports that need one shape per layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import raggedkit as rk

import featdump

from conftest import run


def test_show_describes_ragged_layers(tmp_path: Path) -> None:
    path = rk.make(tmp_path / "r.h5", 10)
    info = json.loads(run("show", str(path), "--json", check=True).stdout)
    (ragged,) = [d for d in info["datasets"] if d["name"] == "map"]
    cells = sum(h * w for h, w in map(rk.grid, range(10)))
    assert ragged["ragged"] == {"cells": cells, "grid_min": [1, 1], "grid_max": [3, 5]}
    assert ragged["uncommitted_rows"] == 0 and info["format_version"] == 2
    text = run("show", str(path), env={"COLUMNS": "200"}, check=True).stdout
    assert f"ragged {cells} cells×{rk.C}, h×w 1×1 to 3×5" in text
    stats = json.loads(run("show", str(path), "--layer", "map", "--row", "2", "--json", check=True).stdout)
    assert stats["shape"] == [rk.C, *rk.grid(2)] and stats["channels"] == rk.C


@pytest.mark.parametrize("copy", [False, True])
def test_merge_of_shards_equals_one_run(tmp_path: Path, copy: bool) -> None:
    one = rk.make(tmp_path / "one.h5", 10)
    merged = tmp_path / "merged.h5"
    run("merge", *map(str, rk.shards(tmp_path)), "-o", str(merged), *(["--copy"] if copy else []), check=True)
    with featdump.open(one) as a, featdump.open(merged) as b:
        np.testing.assert_array_equal(a.cells("map"), b.cells("map"))
        assert b["map"].is_virtual is not copy
        for i in range(10):
            np.testing.assert_array_equal(a.numpy("map", i), b.numpy("map", i))
        np.testing.assert_array_equal(a.numpy("vec"), b.numpy("vec"))
        assert a.paths == b.paths and b.meta["format_version"] == 2


def test_export_pools_each_row_over_its_cells(tmp_path: Path) -> None:
    path = rk.make(tmp_path / "r.h5", 10)
    for pool, reduce in (("avg", np.mean), ("max", np.max)):
        out = tmp_path / f"e-{pool}"
        run("export", str(path), "-o", str(out), "--pool", pool, "--rows-per-part", "4", "--layer", "map", check=True)
        got = np.concatenate([np.load(out / "map" / "emb" / f"part-{k:05d}.npy") for k in range(3)])
        want = np.stack([reduce(rk.row_map(i), axis=(1, 2)) for i in range(10)])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["npy", "safetensors", "zarr"])
def test_export_without_pool_refuses_a_ragged_layer(tmp_path: Path, fmt: str) -> None:
    path = rk.make(tmp_path / "r.h5", 4)
    proc = run("export", str(path), "-o", str(tmp_path / "e"), "--format", fmt)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "featdump: error: layer 'map' is ragged (each image at its own h×w); an export holds one shape per layer: add --pool avg|max"
    ]


def _with_images(tmp_path: Path, n: int) -> Path:
    """A ragged file whose rows' images exist, each of the size its /geometry says."""
    from PIL import Image

    from featdump.store.format import inputs_attr

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        orig_h, orig_w = rk.geometry(i)[:2]
        Image.new("RGB", (int(orig_w), int(orig_h)), (40 * i % 255, 90, 160)).save(folder / f"img{i:03d}.png")
    return rk.make(tmp_path / "r.h5", n, attrs={"inputs": inputs_attr([folder]), "input_kind": "files"})


def test_pixel_boxes_at_each_rows_grid(tmp_path: Path) -> None:
    path = rk.make(tmp_path / "r.h5", 6)
    with featdump.open(path) as f:
        for i in range(6):
            boxes = f.pixel_boxes("map", i)
            h, w = rk.grid(i)
            assert boxes.shape == (h, w, 4)
            ys, xs = np.arange(h) * 8 * 3.0, np.arange(w) * 8 * 2.0  # stride 8 on the input, the image 3x / 2x it
            np.testing.assert_array_equal(boxes[..., 0], np.broadcast_to(ys[:, None], (h, w)))
            np.testing.assert_array_equal(boxes[..., 3], np.broadcast_to(xs[None, :] + 16, (h, w)))
        with pytest.raises(ValueError, match="not a spatial map"):
            f.pixel_boxes("vec", 0)


@pytest.mark.parametrize("overlay", [False, True])
def test_viz_draws_each_row_at_its_grid(tmp_path: Path, overlay: bool) -> None:
    from PIL import Image

    path = _with_images(tmp_path, 5)
    out = tmp_path / "v.png"
    proc = run("viz", str(path), "-o", str(out), "--layer", "map", "--random", "5", *(["--overlay"] if overlay else []))
    assert proc.returncode == 0, proc.stderr
    assert "not found" not in proc.stdout + proc.stderr
    with Image.open(out) as img:
        assert img.size[0] > 100 and img.size[1] > 5 * 50
