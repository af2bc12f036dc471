"""Issue 21 (3-5): a processor's basis is pinned by sha256, its returned shape is checked, and the cells
of a map it changed are placed where it says (plug-ins registered through the real entry-point group)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PHOTOS, run

PLUGIN = '''
import torch
import torch.nn.functional as F


class Bad:
    """Declares the shape it gets, returns half or double the channels."""

    def __init__(self, mode):
        self.mode = mode

    def output_shape(self, shape):
        return shape

    def __call__(self, x):
        return x[:, : x.shape[1] // 2] if self.mode == "half" else torch.cat([x, x], dim=1)


class Pool2:
    """2x2 average pool (7x7 -> 3x3): each output cell covers 2x2 input cells."""

    def output_shape(self, shape):
        return (shape[0], shape[1] // 2, shape[2] // 2)

    def cells(self, shape):
        return (2, 0, 2, 0)

    def __call__(self, x):
        return F.avg_pool2d(x, 2)


class Shuffle(Pool2):
    """Same grid change, but the cells are no places in the image."""

    def cells(self, shape):
        return None


class Liar(Pool2):
    """Cells no grid can have."""

    def cells(self, shape):
        return (0, float("nan"), -1, 1e308)
'''


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "fd_test-0.1.dist-info").mkdir(parents=True)
    (site / "fd_test.py").write_text(PLUGIN)
    (site / "fd_test-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fd-test\nVersion: 0.1\n")
    (site / "fd_test-0.1.dist-info" / "entry_points.txt").write_text(
        "[featdump.processors]\nbad = fd_test:Bad\npool2 = fd_test:Pool2\nshuffle = fd_test:Shuffle\nliar = fd_test:Liar\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in ("astronaut.jpg", "coffee.jpg"):
        shutil.copy(PHOTOS / n, folder / n)
    return folder


def _extract(imgs: Path, out: Path, *extra: str, env: dict[str, str] | None = None):
    return run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "--device", "cpu", "-q", *extra, env=env)


@pytest.mark.slow
def test_a_changed_pca_basis_is_refused_by_like_verify_merge_and_resume(tmp_path, imgs):
    import featdump

    basis = tmp_path / "basis.npz"
    rng = np.random.default_rng(0)
    np.savez(basis, mean=rng.normal(size=64).astype(np.float32), components=rng.normal(size=(4, 64)).astype(np.float32))
    sha = __import__("hashlib").sha256(basis.read_bytes()).hexdigest()
    old = tmp_path / "old.h5"
    _extract(imgs, old, "--out-indices", "1", "--process", f"pca:3:{basis}").check_returncode()
    with featdump.open(old) as f:
        assert f.meta["process"] == [f"pca:3:{basis} sha256:{sha}"]
    assert run("verify", str(old), "-n", "1").returncode == 0
    like = tmp_path / "like.h5"  # unchanged basis: --like takes it, the same --process typed again too
    run("extract", "resnet18", str(imgs), "-o", str(like), "--like", str(old), "--process", f"pca:3:{basis}", "-q", check=True)
    with featdump.open(like) as f:
        assert f.meta["process"] == [f"pca:3:{basis} sha256:{sha}"]

    np.savez(basis, mean=np.zeros(64, np.float32), components=rng.normal(size=(4, 64)).astype(np.float32))
    p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "x.h5"), "--like", str(old), "--process", f"pca:3:{basis}", "-q")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"--process pca: {basis} has changed since the file was made" in p.stderr
    assert not (tmp_path / "x.h5").exists()
    p = run("verify", str(old), "-n", "1")
    assert p.returncode == 2 and "has changed since the file was made" in p.stderr, p.stderr
    new = tmp_path / "new.h5"  # made with the new basis: merge and --resume see another setting
    _extract(imgs, new, "--out-indices", "1", "--process", f"pca:3:{basis}").check_returncode()
    p = run("merge", str(old), str(new), "-o", str(tmp_path / "both.h5"))
    assert p.returncode == 2 and "process" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = _extract(imgs, old, "--out-indices", "1", "--process", f"pca:3:{basis}", "--resume")
    assert p.returncode == 2 and "process" in p.stderr, p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode, returned", [("half", "(32, 56, 56)"), ("double", "(128, 56, 56)")])
def test_a_processor_that_returns_another_shape_stops_the_run(tmp_path, imgs, plugin_env, mode, returned):
    out = tmp_path / "o.h5"
    p = _extract(imgs, out, "--out-indices", "1", "--process", f"bad:{mode}", env=plugin_env)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"featdump: error: --process bad:{mode}: the processor declared shape (64, 56, 56) per image but returned {returned}; "
        "its output_shape and __call__ must agree (fix or remove the processor)"
    ]
    assert not out.exists()


@pytest.mark.slow
def test_a_pooling_processor_places_its_cells(tmp_path, plugin_env):
    from PIL import Image

    import featdump

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(PHOTOS / "coffee.jpg").convert("RGB").resize((672, 448)).save(folder / "wide.png")  # W 672, H 448
    out = tmp_path / "pooled.h5"
    p = _extract(folder, out, "--out-indices", "4", "--crop-mode", "squash", "--crop-pct", "1", "--process", "pool2", env=plugin_env)
    assert p.returncode == 0, p.stderr
    with featdump.open(out) as f:
        assert f["layer4"].shape == (1, 512, 3, 3)
        assert f.attrs("layer4")["reduction"] == 64 and f.attrs("layer4")["pixel_grid"] == [64, 0, 64, 0]
        boxes = f.pixel_boxes("layer4", 0)
    # squash: original pixel = input pixel x (448/224, 672/224); output cell i covers input [64 i, 64 i + 64)
    for i in range(3):
        for j in range(3):
            np.testing.assert_allclose(boxes[i, j], [128 * i, 192 * j, 128 * (i + 1), 192 * (j + 1)])
    p = run("viz", str(out), "-o", str(tmp_path / "v.png"), "--overlay", "--layer", "layer4", "--root", str(folder), env=plugin_env)
    assert p.returncode == 0, p.stderr

    p = run("inspect", "resnet18", "--out-indices", "4", "--process", "pool2", "--json", env=plugin_env)
    layer = json.loads(p.stdout)["layers"][0]
    assert (layer["shape"], layer["reduction"], layer["pixel_grid"]) == ([512, 3, 3], 64, [64, 0, 64, 0])
    p = run("inspect", "resnet18", "--out-indices", "4", "--process", "liar", env=plugin_env)
    assert p.returncode == 1 and "--process liar: cells((512, 7, 7)) returned (0, nan, -1, 1e+308)" in p.stderr, p.stderr
    p = run("inspect", "resnet18", "--out-indices", "4", "--process", "shuffle", "--process", "resize:4x4", "--json", env=plugin_env)
    layer = json.loads(p.stdout)["layers"][0]
    assert (layer["shape"], layer["reduction"], layer["pixel_grid"]) == ([512, 4, 4], 0, [])

    out = tmp_path / "shuffled.h5"
    _extract(folder, out, "--out-indices", "4", "--process", "shuffle", env=plugin_env).check_returncode()
    with featdump.open(out) as f, pytest.raises(ValueError, match="not places in the image|other than places"):
        f.pixel_boxes("layer4", 0)
    p = run("viz", str(out), "-o", str(tmp_path / "w.png"), "--overlay", "--root", str(folder), env=plugin_env)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"featdump: error: --overlay draws spatial (N, C, H, W) layers; 'layer4' is not one ({out} holds none)"
    ], p.stderr
