"""Every stored number equals timm's own features_only output for the same image and weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import run, timm_features

pytestmark = pytest.mark.slow  # every test extracts with real models and compares with timm


# (model, extra featdump flags, timm kwargs for the reference)
CASES = [
    ("resnet18", [], {}),
    ("convnext_atto", ["--out-indices", "0,-1"], {"out_indices": (0, 3)}),
    ("mobilenetv3_small_050", [], {}),
    ("vit_tiny_patch16_224", [], {}),
    ("resnet18", ["--output-stride", "8", "--out-indices", "3,4"], {"output_stride": 8, "out_indices": (3, 4)}),
    ("swin_tiny_patch4_window7_224", ["--out-indices", "-1"], {"out_indices": (3,)}),
    # levels asked out of model order: each dataset must still hold its own level
    ("resnet18", ["--out-indices", "-1,1", "--img-size", "96"], {"out_indices": (1, 4), "img_size": (96, 96)}),
    ("vit_tiny_patch16_224", ["--out-indices", "-1,3"], {"out_indices": (3, 11)}),
]


def _extract(cli, model: str, ckpt: Path, photos: Path, out: Path, *flags: str) -> h5py.File:
    result = cli("extract", model, str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--quiet", *flags)
    assert result.exit_code == 0, result.output
    return h5py.File(out, "r")


@pytest.mark.parametrize("model,flags,kw", CASES, ids=[f"{m}{''.join(f)}" for m, f, _ in CASES])
def test_features_equal_timm(cli, random_checkpoint, photos, tmp_path, model, flags, kw):
    ckpt = random_checkpoint(model)
    f = _extract(cli, model, ckpt, photos, tmp_path / "f.h5", *flags)
    paths = [p.decode() for p in f["paths"][:]]
    assert paths == sorted(p.name for p in photos.iterdir())
    ref = timm_features(model, ckpt, [photos / p for p in paths], **kw)
    names = list(f["features"])
    assert len(names) == len(ref)
    want = kw.get("out_indices")
    if want is not None:
        assert [int(f["features"][n].attrs["index"]) for n in names] == list(want)
    for name, expected in zip(names, ref, strict=True):
        got = f["features"][name][:]
        if expected.ndim == 4 and expected.shape[1:] != got.shape[1:]:
            expected = expected.transpose(0, 3, 1, 2)  # NHWC models (swin) are stored NCHW
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4 * float(np.abs(expected).max()), err_msg=name)
    assert bool(f.attrs["complete"]) and int(f.attrs["num_images"]) == len(paths)


def test_pool_avg_and_max_equal_timm(cli, random_checkpoint, photos, tmp_path):
    ckpt = random_checkpoint("resnet18")
    ref = timm_features("resnet18", ckpt, sorted(photos.iterdir()), out_indices=(2, 4))
    for pool, fn in (("avg", np.mean), ("max", np.max)):
        f = _extract(cli, "resnet18", ckpt, photos, tmp_path / f"{pool}.h5", "--out-indices", "2,4", "--pool", pool)
        assert len(f["features"]) == len(ref)
        for name, expected in zip(f["features"], ref, strict=True):
            got = f["features"][name][:]
            assert got.shape == expected.shape[:2]
            np.testing.assert_allclose(got, fn(expected, axis=(2, 3)), rtol=1e-4, atol=1e-4)
            assert f["features"][name].attrs["pool"] == pool


def test_float16_storage_and_img_size(cli, random_checkpoint, photos, tmp_path):
    ckpt = random_checkpoint("vit_tiny_patch16_224")
    f = _extract(
        cli, "vit_tiny_patch16_224", ckpt, photos, tmp_path / "f16.h5", "--dtype", "float16", "--img-size", "160x192"
    )
    ref = timm_features("vit_tiny_patch16_224", ckpt, sorted(photos.iterdir()), img_size=(160, 192))
    assert list(f.attrs["input_size"]) == [3, 160, 192]
    assert len(f["features"]) == len(ref)
    for name, expected in zip(f["features"], ref, strict=True):
        got = f["features"][name]
        assert got.dtype == np.float16 and got.shape[1:] == (192, 10, 12)
        np.testing.assert_allclose(got[:].astype(np.float32), expected, rtol=2e-3, atol=2e-3 * float(np.abs(expected).max()))


def test_torch_checkpoint_nested_and_prefixed(cli, random_checkpoint, photos, tmp_path):
    """A .pth with {'state_dict': {'module.*': ...}} gives the same numbers as the safetensors file."""
    st = _extract(cli, "resnet18", random_checkpoint("resnet18"), photos, tmp_path / "a.h5", "--out-indices", "-1")
    pt = _extract(cli, "resnet18", random_checkpoint("resnet18", ".pth"), photos, tmp_path / "b.h5", "--out-indices", "-1")
    np.testing.assert_array_equal(st["features/layer4"][:], pt["features/layer4"][:])
    assert pt.attrs["weights"].startswith("checkpoint:") and "sha256:" in pt.attrs["weights"]


def test_tuned_cpu_run_equals_timm(tmp_path: Path, photos: Path, random_checkpoint: Any) -> None:
    """Default tuning (channels_last, all cores, workers, the CPU batch size) against timm's plain
    contiguous forward: the same numbers to float tolerance, with one thread and without."""
    ckpt = random_checkpoint("resnet50")
    sources = sorted(photos.glob("*.jpg"))
    want = timm_features("resnet50", ckpt, sources, img_size=(128, 128))
    for extra in ([], ["--workers", "0", "--batch-size", "3"]):
        out = tmp_path / f"r{len(extra)}.h5"
        env = {"SLURM_CPUS_PER_TASK": "1"} if extra else None
        run("extract", "resnet50", str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--img-size", "128",
            "--quiet", *extra, env=env, check=True)  # fmt: skip
        with h5py.File(out) as f:
            assert len(f["features"]) == len(want)
            for w, ds in zip(want, f["features"].values(), strict=True):
                np.testing.assert_allclose(ds[:], w, rtol=1e-4, atol=2e-4)
