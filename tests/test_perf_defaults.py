"""Performance defaults that must hold whatever the timing: tuned settings per device, a writer
queue bounded in bytes, bounded memory, fast decoding that drifts little, compact storage, and
faster settings that leave the numbers as timm computes them. Nothing here times anything."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import ROOT, run, timm_features
from featdump.options import ExtractConfig, resolve
from featdump.run.placement import Placement


def _cfg(**kw: Any) -> ExtractConfig:
    return ExtractConfig(model="resnet50", inputs=("x",), output="o.h5", **kw)


def _dev(kind: str) -> Any:
    return SimpleNamespace(type=kind)


# --------------------------------------------------------------------------- tuned defaults


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 1, 7), (16, 2, 14), (64, 8, 56), (256, 8, 248)],
)
def test_cpu_defaults_follow_the_cpu_budget(
    cpus: int, workers: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("featdump.run.device.os.sched_getaffinity", lambda pid: set(range(512)), raising=False)
    from featdump.run.device import tune

    t = tune(_dev("cpu"), _cfg(), Placement(cpus=cpus))
    assert (t.workers, t.threads, t.batch_size, t.channels_last) == (workers, threads, 8, True)
    assert t.decode_nice == (19 if cpus <= 4 else 0)  # decode threads share the forward's cores up to 4


def test_cpu_budget_comes_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from featdump.run.device import cpu_budget, tune
    from featdump.run.placement import placement_from_env

    monkeypatch.setattr("featdump.run.device.os.sched_getaffinity", lambda pid: set(range(512)), raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    placement = placement_from_env()
    assert cpu_budget(placement) == 3
    assert tune(_dev("cpu"), _cfg(), placement).threads == 3


def test_flags_win_over_tuning() -> None:
    from featdump.run.device import tune

    t = tune(_dev("cpu"), _cfg(batch_size=3, workers=0), Placement(cpus=16))
    assert (t.batch_size, t.workers) == (3, 0)


def test_cuda_defaults() -> None:
    from featdump.run.device import tune

    t = tune(_dev("cuda"), _cfg(), Placement(cpus=16))
    assert (t.batch_size, t.threads, t.channels_last) == (64, None, True)
    assert 1 <= t.workers <= 8
    assert tune(_dev("cuda"), _cfg(decode="gpu"), Placement(cpus=16)).workers <= 4


# --------------------------------------------------------------------------- writer queue


class _SlowStore:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.rows = 0
        self.progress = SimpleNamespace(num_images=0)
        self.path = "slow.h5"
        self.lock = threading.Lock()

    def append(self, features: Any, paths: Any, failed: Any, inputs_done: int) -> None:
        time.sleep(self.delay)
        self.rows += len(paths)


def test_writer_queue_is_bounded_in_bytes() -> None:
    from featdump.run.writer import Writer

    store = _SlowStore(0.01)
    batch = [np.zeros((4, 1000), np.float32)]  # 16 000 bytes a batch
    writer = Writer(store, max_bytes=50_000)  # type: ignore[arg-type]
    for _ in range(20):
        writer.put((batch, ["p"] * 4, [], 0))
        assert writer.pending <= 50_000
    writer.close()
    assert store.rows == 80
    assert 16_000 <= writer.peak <= 48_000
    assert writer.pending == 0


def test_writer_admits_one_batch_larger_than_the_bound() -> None:
    from featdump.run.writer import Writer

    store = _SlowStore(0.0)
    writer = Writer(store, max_bytes=1_000)  # type: ignore[arg-type]
    big = [np.zeros(10_000, np.float32)]
    for _ in range(3):
        writer.put((big, ["p"], [], 0))
    writer.close()
    assert store.rows == 3
    assert writer.peak == big[0].nbytes  # one at a time: never two of them queued


def test_writer_error_reaches_the_main_thread() -> None:
    from featdump.errors import FeatdumpError
    from featdump.run.writer import Writer

    class Broken(_SlowStore):
        def append(self, *a: Any) -> None:
            raise OSError(28, "No space left on device")

    writer = Writer(Broken(0.0), max_bytes=10)  # type: ignore[arg-type]
    writer.put(([np.zeros(100)], ["p"], [], 0))
    with pytest.raises(FeatdumpError, match="disk space"):
        for _ in range(50):
            writer.put(([np.zeros(100)], ["p"], [], 0))
            time.sleep(0.01)
        writer.close()


# --------------------------------------------------------------------------- storage


@pytest.mark.parametrize(
    "shape", [(64, 112, 112), (256, 56, 56), (2048, 7, 7), (24, 56, 56), (96, 28, 28), (197, 384), (1000,), (97, 300, 300)]
)
@pytest.mark.parametrize("itemsize", [2, 4])
def test_chunks_hold_whole_planes_without_padding(shape: tuple[int, ...], itemsize: int) -> None:
    from featdump.store.sink import chunk_shape

    chunks = chunk_shape(shape, itemsize)
    assert chunks[1:] == shape or (chunks[0] == 1 and chunks[2:] == shape[1:])
    nbytes = math.prod(chunks) * itemsize
    assert nbytes <= (1 << 20) or chunks[1] == 1
    per_image = math.prod(shape) * itemsize
    if chunks[0] == 1 and chunks[1:] != shape and shape[0] != 97:
        assert shape[0] % chunks[1] == 0  # no chunk is part padding
    if per_image >= (64 << 10):
        assert nbytes >= min(per_image, 256 << 10)  # not needlessly small


def test_zstd_is_lossless_and_compact(tmp_path: Path, random_checkpoint: Any, photos: Path) -> None:
    """Post-ReLU maps (resnet18 levels) with --compression zstd: same values, much smaller."""
    import hdf5plugin  # noqa: F401 - readers of zstd files need it

    ckpt = random_checkpoint("resnet18")
    outs = {}
    for codec in ("none", "zstd"):
        out = tmp_path / f"{codec}.h5"
        run("extract", "resnet18", str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--img-size", "96",
            "--out-indices", "0,1", "--dtype", "float16", "--compression", codec, "--quiet", check=True)  # fmt: skip
        outs[codec] = out
    with h5py.File(outs["none"]) as a, h5py.File(outs["zstd"]) as b:
        assert b.attrs["compression"] == "zstd"
        for name in a["features"]:
            np.testing.assert_array_equal(a["features"][name][:], b["features"][name][:])
            raw = b["features"][name].size * 2
            assert b["features"][name].id.get_storage_size() < 0.8 * raw


def test_zstd_level_from_the_environment(tmp_path: Path, random_checkpoint: Any, photos: Path) -> None:
    """FEATDUMP_ZSTD_LEVEL picks zstd's level (negative: its fast modes); the values stay exact
    and the level is in the file's filter settings; a bad level exits 2 before any model loads."""
    import hdf5plugin  # noqa: F401 - readers of zstd files need it

    ckpt = random_checkpoint("resnet18")
    base = ["extract", "resnet18", str(photos), "--checkpoint", str(ckpt), "--img-size", "96",
            "--out-indices", "0,1", "--dtype", "float16", "--compression", "zstd", "--quiet"]  # fmt: skip
    stored = {}
    for level in ("", "-9", "9"):
        out = tmp_path / f"z{level}.h5"
        run(*base, "-o", str(out), env={"FEATDUMP_ZSTD_LEVEL": level}, check=True)
        with h5py.File(out) as h5:
            ds = h5["features"][next(iter(h5["features"]))]
            code, _, values, _ = ds.id.get_create_plist().get_filter(0)
            assert (code, values) == (32015, ((int(level) if level else -3) % (1 << 32),))
            stored[level] = sum(d.id.get_storage_size() for d in h5["features"].values())
            if level:
                with h5py.File(tmp_path / "z.h5") as ref:
                    for name in ref["features"]:
                        np.testing.assert_array_equal(ref["features"][name][:], h5["features"][name][:])
    assert stored["9"] < stored[""] < stored["-9"]
    shown = run("show", str(tmp_path / "z.h5"), "--json", check=True).stdout
    assert "zstd:-3" in shown
    for bad in ("0", "fast", "23", "-51"):
        proc = run(*base, "-o", str(tmp_path / "bad.h5"), env={"FEATDUMP_ZSTD_LEVEL": bad})
        assert proc.returncode == 2, proc.stderr
        assert "FEATDUMP_ZSTD_LEVEL" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad.h5").exists()


# --------------------------------------------------------------------------- decoding


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


def test_fast_decode_drift_is_small(tmp_path: Path, photos: Path, lite0_weights: Path) -> None:
    """--fast-decode changes pixels slightly; features stay close and the classes agree."""
    import torch

    from featdump.model.backbone import load_backbone
    from featdump.data.decode import fast_decode_size, load_rgb

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
    for a, b in zip(fe, ff):
        rel = float((a - b).norm() / a.norm())
        assert rel < 0.25
    last = [float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) for a, b in zip(fe[-1], ff[-1])]
    assert min(last) > 0.9


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


def test_decode_gpu_needs_cuda(tmp_path: Path, photos: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    proc = run("extract", "resnet18", str(photos), "-o", str(tmp_path / "g.h5"), "--no-pretrained", "--decode", "gpu")
    assert proc.returncode == 2
    assert "--decode gpu decodes JPEGs on a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "g.h5").exists()


def test_fast_decode_and_gpu_decode_exclude_each_other() -> None:
    from featdump.errors import UsageError

    with pytest.raises(UsageError, match="exclude each other"):
        resolve({"model": "resnet18", "inputs": ("x",), "output": "o.h5", "fast_decode": True, "decode": "gpu"})


def test_device_decoder_matches_pil_path(tmp_path: Path, photos: Path) -> None:
    """The --decode gpu code path, run on the CPU (torchvision decodes there too): same rows, pixels
    within rounding of PIL + timm's transform, broken files recorded, non-JPEGs passed through."""
    import torch
    from PIL import Image

    from featdump.model.backbone import load_backbone
    from featdump.data.datasets import DeviceDecoder, EncodedDataset, ImageDataset, collate
    from featdump.data.discover import ImageRef

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


# --------------------------------------------------------------------------- numbers and memory


def test_tuned_cpu_run_equals_timm(tmp_path: Path, photos: Path, random_checkpoint: Any) -> None:
    """Default tuning (channels_last, all cores, workers, batches of 8) against timm's plain
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
            for w, ds in zip(want, f["features"].values()):
                np.testing.assert_allclose(ds[:], w, rtol=1e-4, atol=2e-4)


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_images(tmp_path: Path, photos: Path) -> None:
    """Peak RSS of a run over 8x the images stays within 10% (no accumulation anywhere)."""
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.memory import peak_rss

    sources = sorted(photos.glob("*.jpg"))
    peaks = {}
    for n in (16, 128):
        folder = tmp_path / f"many{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"i{i:04d}.jpg").symlink_to(sources[i % len(sources)])
        peaks[n] = peak_rss(
            "resnet18", folder, tmp_path / "rss.h5", ["--no-pretrained", "--img-size", "96", "--device", "cpu"]
        )
    assert peaks[128] <= 1.1 * peaks[16], peaks


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
