"""CPU decoding in threads: the split transform gives timm's numbers exactly, batches keep list
order and failure records whatever the thread count, Pillow's global limit is never left changed."""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from featdump.data.datasets import ImageDataset
from featdump.data.decode import load_rgb
from featdump.data.discover import ImageRef
from featdump.data.loading import ThreadLoader
from featdump.data.transform import SplitTransform

from conftest import PHOTOS


def _images(tmp_path: Path) -> list[Path]:
    """The example photos plus shapes that stress resize/crop: tiny, tall, wide, gray, palette."""
    out = sorted(PHOTOS.glob("*.jpg"))[:4]
    rng = np.random.default_rng(0)
    for name, (h, w), mode in [
        ("tiny.png", (17, 23), "RGB"),
        ("tall.png", (301, 97), "RGB"),
        ("wide.jpg", (120, 640), "RGB"),
        ("gray.png", (200, 150), "L"),
        ("pal.gif", (90, 90), "P"),
    ]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        img = img.convert(mode) if mode != "P" else img.quantize(16)
        img.save(tmp_path / name)
        out.append(tmp_path / name)
    return out


TRANSFORMS = [
    dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic"),  # tf_efficientnet_lite0
    dict(input_size=(3, 224, 224), crop_pct=0.95, interpolation="bicubic"),  # resnet50.a1_in1k
    dict(input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),  # vit
    dict(input_size=(3, 160, 192), crop_pct=1.0, interpolation="bilinear"),
    dict(input_size=(3, 96, 96), crop_pct=0.875, interpolation="bilinear", crop_mode="squash"),
    dict(input_size=(3, 96, 128), crop_pct=0.9, interpolation="bicubic", crop_mode="border"),
]


@pytest.mark.parametrize("kw", TRANSFORMS, ids=lambda kw: f"{kw['input_size'][1:]}-{kw.get('crop_mode', 'center')}")
def test_split_transform_equals_the_whole_transform(kw: dict[str, Any], tmp_path: Path) -> None:
    from timm.data import create_transform

    transform = create_transform(**kw, is_training=False)
    split = SplitTransform(transform)
    assert split.split, [type(s).__name__ for s in transform.transforms]
    imgs = [load_rgb(str(p)) for p in _images(tmp_path)]
    want = torch.stack([transform(im) for im in imgs])
    got = split.finish([split.pil(im) for im in imgs])
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want)  # bit for bit, not just close
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_split_transform_falls_back_to_the_whole_transform() -> None:
    """A transform without a to-tensor step (not timm's) is applied as a whole, per image."""
    import torchvision.transforms as T

    transform = T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float32)])
    split = SplitTransform(transform)
    img = Image.new("RGB", (5, 4), (10, 20, 30))
    assert not split.split
    assert torch.equal(split.finish([split.pil(img)]), transform(img)[None])


def _dataset(tmp_path: Path) -> ImageDataset:
    from timm.data import create_transform

    paths = _images(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    broken = [tmp_path / "empty.jpg", tmp_path / "text.png"]
    order = paths[:3] + broken[:1] + paths[3:7] + broken[1:] + paths[7:]
    refs = [ImageRef(str(p), str(p)) for p in order]
    return ImageDataset(refs, create_transform(input_size=(3, 64, 64), crop_pct=0.875, is_training=False))


def _keys(n: int, batch: int) -> list[list[int]]:
    return [list(range(s, min(n, s + batch))) for s in range(0, n, batch)]


@pytest.mark.parametrize(("threads", "prefetch", "batch"), [(0, 1, 3), (1, 1, 3), (3, 2, 3), (4, 3, 5), (2, 2, 64)])
def test_thread_loader_keeps_order_and_records(tmp_path: Path, threads: int, prefetch: int, batch: int) -> None:
    ds = _dataset(tmp_path)
    batches = list(ThreadLoader(ds, _keys(len(ds), batch), threads, prefetch))
    assert [(b.first, b.last) for b in batches] == [(s, min(len(ds), s + batch) - 1) for s in range(0, len(ds), batch)]
    positions = [p for b in batches for p in b.positions]
    failed = [i for b in batches for i, _ in b.failed]
    assert failed == [3, 8] and sorted(positions + failed) == list(range(len(ds)))
    assert positions == sorted(positions)
    want = torch.stack([ds[i][1] for i in positions])
    got = torch.cat([b.pixels for b in batches if b.pixels is not None])
    assert torch.equal(got, want)
    errors = dict(f for b in batches for f in b.failed)
    assert "empty" in errors[3] or "identify" in errors[3]


def test_thread_loader_stops_its_threads_when_abandoned(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    it = iter(ThreadLoader(ds, _keys(len(ds), 2), 2, 2))
    next(it)
    it.close()  # the run stopped after one batch (Ctrl-C): queued decodes are dropped
    assert not [t for t in threading.enumerate() if t.name.startswith("featdump-decode")]


def test_pixel_limit_is_per_call_and_put_back(tmp_path: Path) -> None:
    """Threads with different limits do not see each other's, and Pillow's global is restored."""
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)  # 60 000 pixels
    before = Image.MAX_IMAGE_PIXELS
    results: dict[str, list[str]] = {"strict": [], "loose": []}

    def work(kind: str) -> None:
        for _ in range(40):
            try:
                load_rgb(str(big), max_pixels=10_000 if kind == "strict" else None)
                results[kind].append("ok")
            except ValueError as exc:
                results[kind].append(str(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in ("strict", "loose", "strict", "loose")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert before == Image.MAX_IMAGE_PIXELS
    assert set(results["loose"]) == {"ok"}
    assert len(results["strict"]) == 80
    assert all(re.search(r"60000 (pixels )?> 10000", r) for r in results["strict"]), set(results["strict"])


def test_extract_leaves_pillow_limit_alone(cli, random_checkpoint, tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    result = cli(
        "extract", "resnet18", str(PHOTOS), "-o", str(tmp_path / "o.h5"), "--checkpoint",
        str(random_checkpoint("resnet18")), "--img-size", "64", "--max-image-pixels", "5000", "--quiet",
    )  # fmt: skip
    # every photo is over the limit: the file is written, but a run that read nothing exits 1 (docs/safety.md)
    assert result.exit_code == 1 and "no image could be read" in result.output, result.output
    assert before == Image.MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- allocator


def test_decode_threads_run_niced_and_this_thread_helps(tmp_path: Path) -> None:
    """Decode threads take the nice value they are given; when the next batch is not decoded in
    time, the waiting thread decodes the images no decode thread has started (never starved)."""
    import time

    ds = _dataset(tmp_path)
    who: dict[int, tuple[str, int]] = {}
    plain = ds.loader

    def slow_loader(source: str, max_pixels: int | None = None) -> Any:
        i = next(k for k, r in enumerate(ds.refs) if r.source == source)
        name = threading.current_thread().name
        who[i] = (name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if name.startswith("featdump-decode"):
            time.sleep(0.3)  # a starved decode thread
        return plain(source, max_pixels)

    ds.loader = slow_loader
    batches = list(ThreadLoader(ds, _keys(len(ds), 4), 1, 1, nice=19))
    assert [p for b in batches for p in b.positions] == [i for i in range(len(ds)) if i not in (3, 8)]
    threads = {name for name, _ in who.values()}
    assert "MainThread" in threads and any(t.startswith("featdump-decode") for t in threads)
    if sys.platform.startswith("linux"):
        assert {nice for name, nice in who.values() if name.startswith("featdump-decode")} == {19}
        assert {nice for name, nice in who.values() if name == "MainThread"} == {os.getpriority(os.PRIO_PROCESS, 0)}
    want = torch.stack([ds[i][1] for i in batches[0].positions])
    assert torch.equal(batches[0].pixels, want)


# --------------------------------------------------------------------------- streams read ahead


def test_stream_is_read_ahead_in_a_thread_bounded_and_closed(tmp_path: Path) -> None:
    """The loader's keys come from a thread that reads the stream (opening shards, waiting for a
    remote store) while the forward pass runs, at most AHEAD batches beyond what was taken; a
    loader that stops early ends that thread and closes the stream."""
    import time

    from featdump.data.batching import StreamBatches

    readers: set[str] = set()
    produced: list[int] = []
    closed = threading.Event()

    def stream() -> Any:
        try:
            for i in range(1000):
                readers.add(threading.current_thread().name)
                produced.append(i)
                yield ImageRef(f"p{i}", "", data=b"x" * 10)
        finally:
            closed.set()

    inflight: dict[int, ImageRef] = {}
    keys = iter(StreamBatches(stream(), 5, inflight))
    first = next(keys)
    assert [pos for pos, _ in first] == [0, 1, 2, 3, 4] and inflight[0].data is None
    # taken: 1 batch; queued: AHEAD batches; the thread holds one more, waiting for room
    bound = 5 * (1 + StreamBatches.AHEAD + 1)
    deadline = time.monotonic() + 30
    while len(produced) < bound and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room to overrun the bound, were there no bound
    assert len(produced) == bound
    assert readers == {"featdump-stream"}
    keys.close()  # the loader stopped (a stop request)
    assert closed.wait(30)
    assert len(produced) == bound
