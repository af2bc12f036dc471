"""viz reads the structured ``inputs`` attribute and the stored transform settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from featdump.data.findinput import find_input
from featdump.data.transform import SplitTransform
from featdump.store.format import inputs_attr, read_inputs_attr
from featdump.viz import model_transform


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
    squash = SplitTransform(model_transform({**base, "crop_mode": "squash", "interpolation": "bilinear"}))
    center = SplitTransform(model_transform({**base, "crop_mode": "center", "interpolation": "bilinear"}))
    nearest = SplitTransform(model_transform({**base, "crop_mode": "squash", "interpolation": "nearest"}))
    a, b, c = (np.asarray(s.pil_view(img)) for s in (squash, center, nearest))
    assert a.shape == b.shape == c.shape == (16, 16, 3)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    # squash keeps the whole width: its picture equals the whole image resized to 16x16
    whole = np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR))
    assert np.abs(a.astype(int) - whole.astype(int)).max() <= 1
