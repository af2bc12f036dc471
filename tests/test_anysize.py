"""--img-size long:L | short:S | native: each image at its own aspect, numbers equal to timm's."""

from __future__ import annotations

from featdump.model.layers import LayerInfo, is_ragged, mark_ragged


def test_ragged_marks_spatial_maps_only() -> None:
    layers = [
        LayerInfo("layer4", "layer4", 4, 512, 32, (512, 2, 2)),
        LayerInfo("blocks.1", "blocks.1", -1, 192, 16, (192, 4, 4), "NLC", {"tokens": "map"}),
        LayerInfo("blocks.1.prefix", "blocks.1", -1, 192, 0, (1, 192), "NLC", {"part": "prefix"}),
        LayerInfo("head", "head", -1, 10, 0, (10,), "NLC"),
    ]
    marked = mark_ragged(layers)
    assert [is_ragged(x, "none") for x in marked] == [True, True, False, False]
    assert not any(is_ragged(x, "avg") for x in marked)  # a pooled layer stays (N, C)
    assert not any(is_ragged(x, "none") for x in layers)  # fixed runs: nothing ragged
    assert marked[0].shape == layers[0].shape


# --- each image at its own shape, against timm directly -------------------------------------------

import math  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import PHOTOS  # noqa: E402
from PIL import Image  # noqa: E402

from featdump.data.batching import Loader, ShapeGroups  # noqa: E402
from featdump.data.discover import ImageRef  # noqa: E402
from featdump.model.backbone import backbone_for  # noqa: E402
from featdump.options import ExtractConfig  # noqa: E402
from featdump.run.forward import Forward  # noqa: E402
from featdump.values import parse_img_size  # noqa: E402

# (width, height): wide, tall, square, very wide, tall again, square: shapes differ per image as the aspects do
SIZES = [(150, 100), (70, 160), (90, 90), (200, 60), (64, 128), (120, 120)]


@pytest.fixture(scope="module")
def aspect_refs(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRef]:
    folder = tmp_path_factory.mktemp("aspects")
    refs = []
    for k, (w, h) in enumerate(SIZES):
        path = folder / f"{k}.png"  # lossless: the reference decodes the same pixels with PIL alone
        Image.open(PHOTOS / "astronaut.jpg").convert("RGB").resize((w, h)).save(path)
        refs.append(ImageRef(f"{k}.png", str(path)))
    return refs


def reference_shape(h: int, w: int, mode: str, side: int, unit: int, max_side: int) -> tuple[int, int]:
    if mode == "long":
        scale = side / max(h, w)
    elif mode == "short":
        scale = side / min(h, w)
    else:
        scale = min(1.0, max_side / max(h, w))
    return tuple(max(unit, int(math.floor(v * scale / unit + 0.5)) * unit) for v in (h, w))  # type: ignore[return-value]


def timm_rows(name: str, refs: list[ImageRef], mode: str, side: int, unit: int, max_side: int, **create: Any) -> list[list[np.ndarray]]:
    """timm alone: features_only at any size, each image resized by torchvision's Resize((h, w)) at
    the model's interpolation, to-tensor, the model's mean/std; one image at a time."""
    import timm
    from timm.data import resolve_data_config
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms

    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, **create).eval()
    cfg = resolve_data_config({}, model=model)
    rows = []
    for ref in refs:
        img = Image.open(ref.source).convert("RGB")
        h, w = reference_shape(img.height, img.width, mode, side, unit, max_side)
        tf = transforms.Compose([
            transforms.Resize((h, w), interpolation=str_to_interp_mode(cfg["interpolation"])),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ])  # fmt: skip
        with torch.inference_mode():
            rows.append([o[0].numpy() for o in model(tf(img)[None])])
    return rows


def featdump_rows(name: str, refs: list[ImageRef], img_size: Any, batch: int = 2, **over: Any) -> tuple[list[Any], list[list[Any]], list[str]]:
    """Loader + Forward as extract runs them: the loader's windows, the per-layer rows in row order."""
    cfg = ExtractConfig(model=name, inputs=("x",), output="x.h5", img_size=parse_img_size(img_size), **over)
    backbone = backbone_for(cfg)
    loader = Loader(refs, backbone, cfg, torch.device("cpu"), batch, 1, 1)
    forward = Forward(backbone, torch.device("cpu"), "fp32", "none", "float32", False)
    windows, per_layer, paths = [], [[] for _ in backbone.layers], []
    for rows in loader:
        windows.append(rows.pixels)
        for k, out in enumerate(forward(rows.pixels)):
            per_layer[k].extend(list(out))
        paths += rows.paths
    return windows, per_layer, paths


CASES = [
    ("resnet18", {}, 32),
    ("test_vit", {"dynamic_img_size": True}, 16),
]


@pytest.mark.parametrize(("name", "create", "unit"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode", ["long:64", "short:48", "native"])
def test_rows_equal_timm_at_each_images_own_shape(
    name: str, create: dict[str, Any], unit: int, mode: str, aspect_refs: list[ImageRef], random_checkpoint: Any
) -> None:
    kind, _, side = mode.partition(":")
    ckpt = random_checkpoint(name)
    over = {"checkpoint": str(ckpt), "max_side": 96}
    windows, got, paths = featdump_rows(name, aspect_refs, mode, **over)
    want = timm_rows(name, aspect_refs, kind, int(side or 0), unit, 96, pretrained=True,
                     pretrained_cfg_overlay={"file": str(ckpt)}, **create)  # fmt: skip
    assert paths == [r.path for r in aspect_refs]  # rows stay in input order
    for groups in windows:  # a batch never mixes shapes, and holds at most the batch size
        assert isinstance(groups, ShapeGroups)
        assert all(x.shape[0] <= 2 for _, x in groups.groups)
        assert sorted(r for rows, _ in groups.groups for r in rows) == list(range(groups.count))
    shapes = set()
    for i, ref_rows in enumerate(want):
        for k, ref in enumerate(ref_rows):
            assert got[k][i].shape == ref.shape, (i, k)
            np.testing.assert_allclose(got[k][i], ref, rtol=1e-4, atol=1e-4)
        shapes.add(ref_rows[-1].shape)
    assert len(shapes) >= 3  # the aspect ratios give different grids


def test_naflex_at_each_images_own_patch_grid(aspect_refs: list[ImageRef]) -> None:
    """A NaFlex ViT (random weights, seed 0 in both) takes each image's own patch grid."""
    name = "naflexvit_base_patch16_gap"
    refs = aspect_refs[:3]
    _, got, _ = featdump_rows(name, refs, "long:48", pretrained=False, out_indices=(-1,))
    want = timm_rows(name, refs, "long", 48, 16, 2048, pretrained=False, out_indices=(-1,))
    for i, ref_rows in enumerate(want):
        assert got[0][i].shape == ref_rows[0].shape
        np.testing.assert_allclose(got[0][i], ref_rows[0], rtol=1e-4, atol=1e-4)
