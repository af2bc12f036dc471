"""Processors through the real command (--process): built-in resize, l2norm and pca equal timm's
outputs transformed by hand; unknown and malformed processors are refused; an entry-point plug-in
is listed, runs and is verified."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import FOUR_PHOTOS, extract_resnet18, run, stored, timm_features


@pytest.mark.slow
def test_processors_equal_timm_by_hand(tmp_path, imgs, random_checkpoint):
    import torch
    import torch.nn.functional as F

    ckpt = random_checkpoint("resnet18")
    ref = timm_features("resnet18", ckpt, [imgs / n for n in FOUR_PHOTOS], out_indices=(1, 2))
    basis = tmp_path / "basis.npz"
    rng = np.random.default_rng(0)
    mean, comp = rng.normal(size=128).astype(np.float32), rng.normal(size=(6, 128)).astype(np.float32)
    np.savez(basis, mean=mean, components=comp)

    out = tmp_path / "l2.h5"
    extract_resnet18(ckpt, imgs, out, "--out-indices", "1,2", "--process", "resize:stride=8", "--process", "l2norm").check_returncode()
    got = stored(out)
    for name, r in zip(["layer1", "layer2"], ref, strict=True):
        want = F.normalize(F.interpolate(torch.from_numpy(r), size=(28, 28), mode="bilinear", align_corners=False), dim=1)
        np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-4, atol=1e-5)
    import h5py

    with h5py.File(out, "r") as h5:  # the stride of the stored grid, not the module's (4 and 8)
        assert [h5[f"features/{n}"].attrs["reduction"] for n in ("layer1", "layer2")] == [8, 8]

    out = tmp_path / "pca.h5"
    p = extract_resnet18(ckpt, imgs, out, "--out-indices", "2", "--process", f"pca:4:{basis}", "--process", "resize:14x21")
    assert p.returncode == 0, p.stderr
    x = torch.from_numpy(ref[1]).permute(0, 2, 3, 1) - torch.from_numpy(mean)
    want = F.interpolate((x @ torch.from_numpy(comp[:4]).T).permute(0, 3, 1, 2), size=(14, 21), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(stored(out)["layer2"], want.numpy(), rtol=1e-4, atol=1e-4)
    with h5py.File(out, "r") as h5:
        assert h5["features/layer2"].attrs["reduction"] == 16  # input rows per cell row: 224 / 14

    out = tmp_path / "pooled.h5"
    extract_resnet18(ckpt, imgs, out, "--out-indices", "2", "--pool", "avg", "--process", "l2norm").check_returncode()
    want = F.normalize(torch.from_numpy(ref[1]).mean(dim=(2, 3)), dim=1)
    np.testing.assert_allclose(stored(out)["layer2"], want.numpy(), rtol=1e-5, atol=1e-6)
    import featdump

    with featdump.open(out) as f:
        assert f.meta["process"] == ["l2norm"]

    p = run("inspect", "resnet18", "--out-indices", "2", "--process", f"pca:4:{basis}", "--json")
    assert json.loads(p.stdout)["layers"][0]["shape"] == [4, 28, 28]


@pytest.mark.slow
def test_processor_errors(tmp_path, imgs):
    p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "o.h5"), "--no-pretrained", "--process", "sharpen")
    assert p.returncode == 2
    assert "no such processor installed" in p.stderr and "pip install featdump-sharpen" in p.stderr
    assert not (tmp_path / "o.h5").exists()
    p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "o.h5"), "--no-pretrained", "--process", "resize:big")
    assert p.returncode == 2 and "resize:HxW" in p.stderr


def test_a_pca_basis_that_is_a_fifo_is_refused_without_opening_it(tmp_path, cli):
    fifo = tmp_path / "basis.npz"
    os.mkfifo(fifo)  # opening it would block until a writer came
    res = cli("inspect", "resnet18", "--process", f"pca:4:{fifo}")
    assert res.exit_code == 2 and f"basis file {fifo} is not a regular file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


PLUGIN = '''
import torch

class Double:
    """Doubles every value (a test plug-in)."""

    def __init__(self, *args):
        self.factor = float(args[0]) if args else 2.0

    def output_shape(self, shape):
        return shape

    def __call__(self, x):
        return x * self.factor
'''


@pytest.mark.slow
def test_entry_point_plugin(tmp_path, imgs, random_checkpoint):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fd_double.py").write_text(PLUGIN)
    dist = site / "fd_double-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fd-double\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[featdump.processors]\ndouble = fd_double:Double\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    p = run("processors", "--json", env=env)
    assert {"name": "double", "source": "fd-double", "target": "fd_double:Double",
            "doc": "Doubles every value (a test plug-in)."} in json.loads(p.stdout)
    ckpt = random_checkpoint("resnet18")
    base, doubled = tmp_path / "a.h5", tmp_path / "b.h5"
    run("extract", "resnet18", str(imgs), "-o", str(base), "--checkpoint", str(ckpt), "-q", "--out-indices", "1", env=env, check=True)
    run("extract", "resnet18", str(imgs), "-o", str(doubled), "--checkpoint", str(ckpt), "-q", "--out-indices", "1",
        "--process", "double:3", env=env, check=True)  # fmt: skip
    np.testing.assert_allclose(stored(doubled)["layer1"], 3 * stored(base)["layer1"], rtol=1e-6)
    p = run("verify", str(doubled), "-n", "2", env=env)
    assert p.returncode == 0, p.stderr
    p = run("verify", str(doubled), "-n", "2")  # without the plug-in installed
    assert p.returncode == 2 and "double" in p.stderr


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_processors_lists_each_plugin_docstring(tmp_path):
    site = tmp_path / "site"
    dist = site / "fd_double-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "fd_double.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fd-double\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[featdump.processors]\ndouble = fd_double:Double\nbroken = fd_missing:Gone\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    listed = {p["name"]: p["doc"] for p in json.loads(run("processors", "--json", env=env, check=True).stdout)}
    assert listed["double"] == "Doubles every value (a test plug-in)."
    assert listed["broken"] == "cannot be loaded: No module named 'fd_missing'"
    table = run("processors", env=env, check=True).stdout
    assert "Doubles every value (a test plug-in)." in table and "cannot be loaded" in table
