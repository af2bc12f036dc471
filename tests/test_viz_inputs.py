"""viz reads the structured ``inputs`` attribute and the stored transform settings, and draws each
row's own image, read again the way verify reads it: from the recorded table, tar shard or URL."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featdump
from featdump.data.transform import SplitTransform
from featdump.model.layers import DataConfig
from featdump.store.findinput import find_input
from featdump.store.format import inputs_attr, read_inputs_attr


def test_inputs_attr_round_trip(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    text = inputs_attr(["photos", Path("a/b.jpg"), "https://example.org/x.tar", "/abs/list.txt"])
    assert json.loads(text) == [
        os.path.join(tmp_path, "photos"),
        os.path.join(tmp_path, "a", "b.jpg"),
        "https://example.org/x.tar",
        "/abs/list.txt",
    ]
    assert read_inputs_attr(text) == json.loads(text)
    assert read_inputs_attr(text.encode()) == json.loads(text)
    assert read_inputs_attr(None) is None and read_inputs_attr("not json") is None
    assert read_inputs_attr('{"a": 1}') is None


def test_find_input_through_absolute_inputs(tmp_path: Path) -> None:
    img = tmp_path / "split" / "train" / "cat" / "1.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(b"x")
    anchors = [tmp_path / "split" / "train"]
    # several INPUTs: the stored path starts with the INPUT as written
    assert find_input("split/train/cat/1.jpg", [], anchors) == img
    # one INPUT folder: stored relative to it
    assert find_input("cat/1.jpg", [tmp_path / "split" / "train"]) == img
    # an image file given as INPUT: stored as given
    assert find_input("train/cat/1.jpg", [], [img]) == img
    assert find_input("dog/2.jpg", [tmp_path], anchors) is None


def test_model_view_uses_the_stored_crop_mode_and_interpolation() -> None:
    img = Image.fromarray((np.arange(64 * 32 * 3) % 251).astype(np.uint8).reshape(32, 64, 3))
    base = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
    squash = SplitTransform(DataConfig.from_timm({**base, "crop_mode": "squash", "interpolation": "bilinear"}).transform())
    center = SplitTransform(DataConfig.from_timm({**base, "crop_mode": "center", "interpolation": "bilinear"}).transform())
    nearest = SplitTransform(DataConfig.from_timm({**base, "crop_mode": "squash", "interpolation": "nearest"}).transform())
    a, b, c = (np.asarray(s.pil_view(img)) for s in (squash, center, nearest))
    assert a.shape == b.shape == c.shape == (16, 16, 3)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    # squash keeps the whole width: its picture equals the whole image resized to 16x16
    whole = np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR))
    assert np.abs(a.astype(int) - whole.astype(int)).max() <= 1


# --------------------------------------------------------------------------- the image of each row, again


def _input_tile(png: Path, real: Path, h5: Path, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """The first row's input tile in the picture, and the tile the row's real image gives."""
    from featdump.data.decode import load_rgb
    from featdump.viz import LABEL_H, PAD

    meta = featdump.open(h5).meta
    th = max(8, round(tile * int(meta["input_size"][1]) / int(meta["input_size"][2])))
    want = SplitTransform(DataConfig.from_timm(meta).transform()).pil_view(load_rgb(str(real))).resize((tile, th), Image.Resampling.BICUBIC)
    shown = np.asarray(Image.open(png).convert("RGB"))[PAD + LABEL_H : PAD + LABEL_H + th, PAD : PAD + tile]
    return shown, np.asarray(want)


@pytest.mark.parametrize("kind", ["parquet", "tar", "url"])
def test_viz_draws_the_rows_own_image_not_a_local_file_of_that_name(cli, tmp_path, monkeypatch, kind):
    """issue 21 item 7: Parquet bytes stored as ``00/img0000.png`` drew an unrelated local
    ``00/img0000.png``; a decoy of every stored name lies in the current folder and the file's."""
    from servers import http_server
    from streamkit import images_in_order, make_images, write_parquet, write_shards

    from faultkit import FAST, MODEL

    images = make_images(tmp_path / "images", 3, seed=5)
    real = images_in_order(images)[0]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    server = None
    if kind == "parquet":
        inputs, extra = [str(write_parquet(images, tmp_path / "t.parquet"))], ["--image-column", "image"]
    elif kind == "tar":
        inputs, extra = [str(tmp_path / "shards" / "data-{000000..000001}.tar")], []
        write_shards(images, tmp_path / "shards", per_shard=2)
    else:
        server = http_server(images)
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{server.url}/{p.relative_to(images).as_posix()}\n" for p in images_in_order(images)))
        inputs, extra = [str(urls)], []
    try:
        out, png = work / "f.h5", work / "f.png"
        res = cli("extract", MODEL, *inputs, "-o", str(out), "--no-pretrained", "--out-indices", "1", *FAST, *extra)
        assert res.exit_code == 0, res.output
        stored = featdump.open(out).paths[0]
        for decoy in (work / stored.split("://")[-1].lstrip("/"), work / Path(stored).name):  # the stored path here, the name
            decoy.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (255, 0, 0)).save(decoy, format="PNG")
        res = cli("viz", str(out), "-o", str(png), "--image", "0", "--tile", "64")
        assert res.exit_code == 0 and res.stderr == "", res.output
        shown, want = _input_tile(png, real, out, 64)
        assert np.array_equal(shown, want)
    finally:
        if server is not None:
            server.stop()
    if kind == "url":
        return
    shutil.rmtree(tmp_path / "shards") if kind == "tar" else os.unlink(inputs[0])
    res = cli("viz", str(out), "-o", str(png), "--image", "0", "--tile", "64")
    assert res.exit_code == 0, res.output
    gone = "tar shard not found" if kind == "tar" else "input not found"
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("1 input image(s) not found, drawn as placeholders: ")
    assert gone in res.stderr, res.stderr
    assert not np.array_equal(*_input_tile(png, real, out, 64))  # a placeholder, not the decoy
