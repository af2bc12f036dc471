"""Dense features (docs/dense.md): crop modes through timm's transform, /geometry and
pixel_boxes, --tokens both, the ViT tiling error, and -o into folders. Through the real command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import run, smooth_picture

IMG = 64  # --img-size: small, so each run takes a second


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Portrait, landscape, tiny and an EXIF-rotated JPEG (stored 120x80, shown 80x120)."""
    folder = tmp_path_factory.mktemp("shapes")
    smooth_picture(140, 90, 1).save(folder / "portrait.png")
    smooth_picture(100, 170, 2).save(folder / "landscape.png")
    smooth_picture(5, 7, 3).save(folder / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    smooth_picture(80, 120, 4).save(folder / "rotated.jpg", exif=exif, quality=95)
    return folder


def _extract(cli: Any, model: str, inputs: Path, out: Path, *flags: str) -> None:
    result = cli("extract", model, str(inputs), "-o", str(out), "--quiet", *flags)
    assert result.exit_code == 0, result.output


def _reference_transform(model: Any, crop_mode: str, crop_pct: float) -> Any:
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({"input_size": (3, IMG, IMG), "crop_mode": crop_mode, "crop_pct": crop_pct}, model=model)
    assert (cfg["crop_mode"], cfg["crop_pct"]) == (crop_mode, crop_pct)
    return create_transform(**cfg, is_training=False)


def _expected_geometry(h: int, w: int, mode: str, pct: float) -> tuple[float, ...]:
    """timm's transforms_imagenet_eval arithmetic, written out by hand for a square input."""
    scale = math.floor(IMG / pct)
    if mode == "squash":
        rh = rw = scale
    elif mode == "border":
        ratio = max(h / scale, w / scale)
        rh, rw = round(h / ratio), round(w / ratio)
    else:  # torchvision Resize(int): shorter side to `scale`
        rh, rw = (int(scale * h / w), scale) if w <= h else (scale, int(scale * w / h))
    pad_t = (IMG - rh) // 2 if rh < IMG else 0
    pad_l = (IMG - rw) // 2 if rw < IMG else 0
    ph = rh + pad_t + ((IMG - rh + 1) // 2 if rh < IMG else 0)
    pw = rw + pad_l + ((IMG - rw + 1) // 2 if rw < IMG else 0)
    top, left = int(round((ph - IMG) / 2)) - pad_t, int(round((pw - IMG) / 2)) - pad_l
    sy, sx = h / rh, w / rw
    return (h, w, sy, sx, top * sy, left * sx)


@pytest.mark.slow
@pytest.mark.parametrize("mode,pct", [("center", 0.9), ("squash", 0.875), ("border", 1.0)])
def test_crop_modes_equal_timm(cli, random_checkpoint, shapes, tmp_path, mode, pct):
    import timm
    import torch

    from featdump.data.decode import load_rgb

    ckpt = random_checkpoint("resnet18")
    out = tmp_path / "f.h5"
    _extract(cli, "resnet18", shapes, out, "--checkpoint", str(ckpt), "--img-size", str(IMG),
             "--crop-mode", mode, "--crop-pct", str(pct), "--out-indices", "1,4")  # fmt: skip
    import featdump

    with featdump.open(out) as f:
        assert (f.meta["crop_mode"], f.meta["crop_pct"]) == (mode, pct)
        assert f.paths == ["landscape.png", "portrait.png", "rotated.jpg", "tiny.png"]
        model = timm.create_model(
            "resnet18", features_only=True, out_indices=(1, 4), pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))
        ).eval()
        transform = _reference_transform(model, mode, pct)
        images = [load_rgb(str(shapes / p)) for p in f.paths]
        with torch.inference_mode():
            ref = [o.numpy() for o in model(torch.stack([transform(im) for im in images]))]
        assert len(f.layers) == len(ref) == 2
        for name, want in zip(f.layers, ref, strict=True):
            np.testing.assert_allclose(f.numpy(name), want, rtol=1e-4, atol=2e-4 * float(np.abs(want).max()), err_msg=name)
        geo = f.geometry()
        assert geo.shape == (4, 6) and geo.dtype == np.float64
        sizes = [(im.height, im.width) for im in images]
        assert sizes[f.paths.index("rotated.jpg")] == (120, 80)  # EXIF orientation applied
        for row, (h, w) in enumerate(sizes):
            np.testing.assert_allclose(geo[row], _expected_geometry(h, w, mode, pct), rtol=1e-12, err_msg=f.paths[row])


def _square_image(path: Path, h: int, w: int, top: int, left: int, side: int) -> None:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[top : top + side, left : left + side] = 255
    Image.fromarray(arr).save(path)


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_bright_square_is_where_pixel_boxes_say(cli, random_checkpoint, tmp_path, mode):
    """conv1 of resnet18 set by hand to a box filter on channel 0: its strongest cell is the bright square."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(random_checkpoint("resnet18")))
    weight = torch.zeros_like(sd["conv1.weight"])
    weight[0] = 1.0 / weight[0].numel()
    sd["conv1.weight"] = weight
    ckpt = tmp_path / "box.safetensors"
    save_file(sd, str(ckpt))
    images = tmp_path / "img"
    images.mkdir()
    # h, w, top, left, side: off centre, but inside the centre crop too
    squares = {"wide.png": (200, 320, 120, 140, 24), "tall.png": (300, 180, 190, 30, 30)}
    for name, (h, w, top, left, side) in squares.items():
        _square_image(images / name, h, w, top, left, side)
    out = tmp_path / "sq.h5"
    _extract(cli, "resnet18", images, out, "--checkpoint", str(ckpt), "--img-size", "96", "--crop-mode", mode,
             "--crop-pct", "1.0", "--layers", "conv1")  # fmt: skip
    import featdump

    with featdump.open(out) as f:
        for row, name in enumerate(f.paths):
            h, w, top, left, side = squares[name]
            fmap = f.numpy("conv1", row)[0]
            i, j = np.unravel_index(int(np.argmax(fmap)), fmap.shape)
            boxes = f.pixel_boxes("conv1", row)
            assert boxes.shape == (*fmap.shape, 4)
            y0, x0, y1, x1 = boxes[i, j]
            cy, cx = top + side / 2, left + side / 2  # the square's centre, original pixels
            # the strongest cell is the one whose box holds the square's centre (within one cell)
            assert y0 - (y1 - y0) <= cy <= y1 + (y1 - y0), (name, mode, boxes[i, j], cy)
            assert x0 - (x1 - x0) <= cx <= x1 + (x1 - x0), (name, mode, boxes[i, j], cx)
            finite = boxes[~np.isnan(boxes).any(axis=-1)]
            assert finite.min() >= 0 and finite[:, 2].max() <= h and finite[:, 3].max() <= w
            if mode == "border":  # letterboxed: rows or columns of cells wholly in padding are NaN
                assert np.isnan(boxes).any()
                # the cells that hold image cover it exactly, edge to edge
                assert finite[:, 0].min() == 0 and finite[:, 1].min() == 0
                assert finite[:, 2].max() == h and finite[:, 3].max() == w
            else:
                assert not np.isnan(boxes).any()


@pytest.mark.slow
def test_tokens_both_equals_forward_intermediates(cli, random_checkpoint, photos, tmp_path):
    import timm
    import torch

    from featdump.data.decode import load_rgb

    ckpt = random_checkpoint("vit_tiny_patch16_224")
    out = tmp_path / "v.h5"
    _extract(cli, "vit_tiny_patch16_224", photos, out, "--checkpoint", str(ckpt), "--img-size", str(IMG),
             "--layers", "blocks.1,blocks.11", "--tokens", "both")  # fmt: skip
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=IMG, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))
    ).eval()
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({"input_size": (3, IMG, IMG)}, model=model), is_training=False)
    import featdump

    with featdump.open(out) as f:
        assert f.layers == ["blocks.1", "blocks.1.prefix", "blocks.11", "blocks.11.prefix"]
        x = torch.stack([transform(load_rgb(str(photos / p))) for p in f.paths])
        with torch.inference_mode():
            ref = model.forward_intermediates(x, indices=[1, 11], return_prefix_tokens=True, intermediates_only=True)
        assert len(ref) == 2
        for block, (spatial, prefix) in zip((1, 11), ref, strict=True):
            name = f"blocks.{block}"
            assert f[name].shape == (len(f.paths), 192, IMG // 16, IMG // 16)
            assert f[f"{name}.prefix"].shape == (len(f.paths), 1, 192)
            np.testing.assert_allclose(f.numpy(name), spatial.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(f.numpy(f"{name}.prefix"), prefix.numpy(), rtol=1e-5, atol=1e-5)
            assert f.attrs(name)["num_prefix_tokens"] == 1 and f.attrs(f"{name}.prefix")["num_prefix_tokens"] == 1
        spatial_ref = ref[0][0].numpy()
    res = cli("viz", str(out), "-o", str(tmp_path / "v.png"))  # .prefix layers drawn as vectors
    assert res.exit_code == 0, res.output
    pooled = tmp_path / "p.h5"
    _extract(cli, "vit_tiny_patch16_224", photos, pooled, "--checkpoint", str(ckpt), "--img-size", str(IMG),
             "--layers", "blocks.1", "--tokens", "both", "--pool", "avg")  # fmt: skip
    with featdump.open(pooled) as f:  # avg over the patch tokens only (timm's convention); prefix kept
        np.testing.assert_allclose(f.numpy("blocks.1"), spatial_ref.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
        assert f["blocks.1.prefix"].shape == (len(f.paths), 1, 192)


@pytest.mark.slow
def test_img_size_that_patches_cannot_tile_is_a_usage_error(tmp_path, photos):
    res = run("extract", "vit_tiny_patch16_224", str(photos), "-o", str(tmp_path / "v.h5"), "--no-pretrained",
              "--img-size", "72")  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "not a multiple of vit_tiny_patch16_224's patch size 16x16" in res.stderr
    assert "nearest valid sizes: 64 or 80" in res.stderr
    assert not (tmp_path / "v.h5").exists()
    res = run("inspect", "vit_tiny_patch16_224", "--img-size", "64x70", "--layers", "blocks.0")
    assert res.returncode == 2 and "nearest valid sizes: 64x64 or 64x80" in res.stderr


@pytest.mark.slow
def test_output_folders(cli, shapes, tmp_path):
    out = tmp_path / "new" / "deeper" / "f.h5"
    _extract(cli, "resnet18", shapes, out, "--no-pretrained", "--img-size", "32", "--out-indices", "-1")
    assert out.is_file()
    folder = tmp_path / "existing"
    folder.mkdir()
    res = run("extract", "resnet18", str(shapes), "-o", str(folder), "--no-pretrained")
    assert res.returncode == 2
    assert res.stderr.strip() == f"featdump: error: -o {folder} is a folder; name an .h5 file"
    res = run("extract", "resnet18", str(shapes), "-o", str(folder), "--no-pretrained", "--overwrite")
    assert res.returncode == 2 and "is a folder" in res.stderr


@pytest.mark.slow
def test_crop_settings_are_resume_and_merge_settings(cli, shapes, tmp_path):
    import featdump

    flags = ("--no-pretrained", "--img-size", "32", "--out-indices", "-1", "--crop-mode", "border", "--crop-pct", "1")
    out = tmp_path / "f.h5"
    for i in (0, 1):
        _extract(cli, "resnet18", shapes, out, *flags, "--shard", f"{i}/2")
    whole = tmp_path / "whole.h5"
    _extract(cli, "resnet18", shapes, whole, *flags)
    shard0 = tmp_path / "f.shard-00000-of-00002.h5"
    # the model's own crop (center, 0.875) against the file's border/1.0
    res = cli("extract", "resnet18", str(shapes), "-o", str(out), "--quiet", "--resume", *flags[:-4], "--shard", "0/2")
    assert res.exit_code == 2 and "crop_mode" in res.output
    merged = tmp_path / "all.h5"
    res = cli("merge", str(shard0), str(tmp_path / "f.shard-00001-of-00002.h5"), "-o", str(merged), "--copy")
    assert res.exit_code == 0, res.output
    with featdump.open(merged) as m, featdump.open(whole) as w:
        assert m.paths == w.paths
        np.testing.assert_array_equal(m.geometry(), w.geometry())
        np.testing.assert_array_equal(m.pixel_boxes(m.layers[0], 2), w.pixel_boxes(w.layers[0], 2))


def test_crop_pct_out_of_range_is_a_usage_error(cli, shapes, tmp_path):
    res = cli("extract", "resnet18", str(shapes), "-o", str(tmp_path / "f.h5"), "--crop-pct", "1.5")
    assert res.exit_code == 2 and "--crop-pct takes a number in (0, 1]" in res.output
    res = cli("extract", "resnet18", str(shapes), "-o", str(tmp_path / "f.h5"), "--crop-mode", "letterbox")
    assert res.exit_code == 2 and "--crop-mode must be one of center|squash|border" in res.output


@pytest.mark.slow
def test_viz_overlay_paints_cells_into_their_boxes(cli, shapes, tmp_path):
    from featdump.data.geometry import cell_boxes
    from featdump.overlay import paint

    # a 2x2 map over a 10x20 photo letterboxed into a 20x20 input: rows 0..4 of the input are padding
    boxes = cell_boxes((10, 20, 1.0, 1.0, -5.0, 0.0), (2, 2), (20, 20), 10)
    np.testing.assert_array_equal(boxes[0, 0], [0, 0, 5, 10])
    colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    got = np.asarray(paint(Image.new("RGB", (20, 10)), boxes, colours, alpha=1.0))
    assert (got[:5, :10] == [255, 0, 0]).all() and (got[5:, 10:] == [255, 255, 255]).all()
    assert (got[5:, :10] == [0, 0, 255]).all() and (got[:5, 10:] == [0, 255, 0]).all()
    assert np.isnan(cell_boxes((10, 20, 1.0, 1.0, -15.0, 0.0), (2, 2), (20, 20), 10)[0]).all()  # wholly padding

    out = tmp_path / "f.h5"
    _extract(cli, "resnet18", shapes, out, "--no-pretrained", "--img-size", "32", "--crop-mode", "border",
             "--out-indices", "1,-1")  # fmt: skip
    res = cli("viz", str(out), "-o", str(tmp_path / "ov.png"), "--overlay", "--image", "0", "--image", "rotated.jpg")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "ov.png").size[0] > 3 * 160
    pooled = tmp_path / "p.h5"
    _extract(cli, "resnet18", shapes, pooled, "--no-pretrained", "--img-size", "32", "--pool", "avg", "--out-indices", "-1")
    res = cli("viz", str(pooled), "-o", str(tmp_path / "p.png"), "--overlay")
    assert res.exit_code == 2 and "--overlay draws spatial (N, C, H, W) layers" in res.output


@pytest.mark.slow
def test_docs_dense_prediction_example(photos, tmp_path):
    """docs/dense.md's FPN example, run as written (random weights, two of the photos)."""
    import re
    import shlex
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    section = (ROOT / "docs" / "dense.md").read_text(encoding="utf-8")
    command, code = re.compile(r"^```\w*\n(.*?)^```", re.S | re.M).findall(section)[:2]
    args = shlex.split(command.strip())
    assert args[:2] == ["featdump", "extract"]
    (tmp_path / "photos").mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg"):
        shutil.copy(photos / name, tmp_path / "photos" / name)
    res = run(*args[1:], "--no-pretrained", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", proc.stdout)]
    assert numbers[:2] == [480.0, 480.0] and len(numbers) == 10  # astronaut.jpg is 480x480; then a box of 4


def test_tokens_both_on_feature_levels_is_a_usage_error(cli, tmp_path, photos):
    """Feature levels carry no prefix tokens: --tokens both asks for --layers instead of storing maps silently."""
    for command in (["inspect", "vit_tiny_patch16_224"], ["extract", "vit_tiny_patch16_224", str(photos), "-o", str(tmp_path / "o.h5"), "--no-pretrained"]):
        result = cli(*command, "--tokens", "both")
        assert result.exit_code == 2, result.output
        assert "--tokens both" in result.output and "--layers" in result.output
    assert not (tmp_path / "o.h5").exists()
