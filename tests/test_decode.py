"""Decoding: --fast-decode drifts little and is recorded, --decode gpu (its code path run on the
CPU) matches the PIL path, and batches are pinned by the DataLoader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import run


def _jpegs(tmp_path: Path, photos: Path) -> list[Path]:
    """The example photos plus an upscaled (~1.2 MP) copy of each, where draft mode really acts."""
    from PIL import Image

    out = sorted(photos.glob("*.jpg"))
    for p in list(out)[:4]:
        big = tmp_path / f"big-{p.name}"
        with Image.open(p) as im:
            im.convert("RGB").resize((1280, 960), Image.BICUBIC).save(big, quality=90)
        out.append(big)
    return out


@pytest.mark.slow
def test_fast_decode_drift_is_small(tmp_path: Path, photos: Path, lite0_weights: Path) -> None:
    """--fast-decode changes pixels slightly; features stay close and the classes agree."""
    import torch

    from featdump.data.decode import fast_decode_size, load_rgb
    from featdump.model.backbone import load_backbone

    paths = _jpegs(tmp_path, photos)
    bb = load_backbone("tf_efficientnet_lite0", checkpoint=str(lite0_weights))
    tf = bb.data.transform()
    size = fast_decode_size(bb.data.input_size, bb.data.crop_pct)
    assert size == 256  # 224 / crop_pct 0.875
    exact = torch.stack([tf(load_rgb(str(p))) for p in paths])
    fast = torch.stack([tf(load_rgb(str(p), shrink_to=size)) for p in paths])
    pixels = (fast - exact).abs() * 0.5 * 255  # lite0 normalises with std 0.5: back to 0..255 units
    assert 0 < float(pixels.mean()) < 2.0
    with torch.inference_mode():
        fe, ff = bb.model(exact), bb.model(fast)
    assert len(fe) == len(ff) and len(fe[-1]) == len(ff[-1])
    for a, b in zip(fe, ff, strict=True):
        rel = float((a - b).norm() / a.norm())
        assert rel < 0.25
    last = [float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) for a, b in zip(fe[-1], ff[-1], strict=True)]
    assert min(last) > 0.9


@pytest.mark.slow
def test_fast_decode_is_recorded_and_resume_checks_it(tmp_path: Path, photos: Path, random_checkpoint: Any) -> None:
    ckpt = random_checkpoint("resnet18")
    out = tmp_path / "f.h5"
    base = ["extract", "resnet18", str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--img-size", "64", "--quiet"]
    run(*base, "--fast-decode", check=True)
    with h5py.File(out) as f:
        assert f.attrs["decode"] == "fast"
    proc = run(*base, "--resume")
    assert proc.returncode == 2
    assert "decode" in proc.stderr


@pytest.mark.slow
def test_decode_gpu_needs_cuda(tmp_path: Path, photos: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    proc = run("extract", "resnet18", str(photos), "-o", str(tmp_path / "g.h5"), "--no-pretrained", "--decode", "gpu")
    assert proc.returncode == 2
    assert "--decode gpu decodes JPEGs on a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "g.h5").exists()


def test_device_decoder_matches_pil_path(tmp_path: Path, photos: Path) -> None:
    """The --decode gpu code path, run on the CPU (torchvision decodes there too): same rows, pixels
    within rounding of PIL + timm's transform, broken files recorded, non-JPEGs passed through."""
    import torch
    from PIL import Image

    from featdump.data.datasets import DeviceDecoder, EncodedDataset, ImageDataset, collate
    from featdump.data.discover import ImageRef
    from featdump.model.backbone import load_backbone

    jpegs = _jpegs(tmp_path, photos)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpegs[0].read_bytes()[:2000])
    png = tmp_path / "page.png"
    Image.open(jpegs[1]).save(png)
    refs = [ImageRef(p.name, str(p)) for p in [*jpegs, broken, png]]
    bb = load_backbone("resnet18", pretrained=False)
    tf = bb.data.transform()
    got = DeviceDecoder(tf, torch.device("cpu"))(collate([EncodedDataset(refs, tf)[i] for i in range(len(refs))]))
    want = collate([ImageDataset(refs, tf)[i] for i in range(len(refs))])
    assert got.positions == want.positions
    assert [i for i, _ in got.failed] == [i for i, _ in want.failed] == [len(jpegs)]
    assert "decode_jpeg" in got.failed[0][1]
    diff = (got.pixels - want.pixels).abs() * torch.tensor(bb.data.std).view(1, 3, 1, 1) * 255
    assert float(diff.mean()) < 1.0
    np.testing.assert_array_equal(got.pixels[-1].numpy(), want.pixels[-1].numpy())  # the PNG: exact path


def test_batches_are_pinned_by_the_dataloader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DataLoader pins what has a pin_memory method: Batch must have one, or CUDA runs would
    copy from pageable memory (no CUDA here: Tensor.pin_memory is stubbed to record the call)."""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from featdump.data.datasets import Batch
    from featdump.data.decode import Encoded

    pinned: list[tuple[int, ...]] = []

    def fake_pin(t: Any, *a: Any) -> Any:
        pinned.append(tuple(t.shape))
        return t.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    got = pin_memory(Batch([0, 1], torch.zeros(2, 3, 4, 4), [(2, "bad")], 0, 2))
    assert isinstance(got, Batch) and got.failed == [(2, "bad")] and pinned == [(2, 3, 4, 4)]
    got = pin_memory(Batch([0, 1], None, [], 0, 1, [Encoded(torch.zeros(10, dtype=torch.uint8)), torch.zeros(3, 4, 4)]))
    assert isinstance(got.encoded[0], Encoded) and pinned[1:] == [(10,), (3, 4, 4)]
