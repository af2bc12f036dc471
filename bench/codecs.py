"""Codec table: MB/s written and stored/raw ratio of HDF5 filters on real post-ReLU feature maps."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


# (label, the --compression name that maps to it or "", h5py kwargs factory); see store.compression_kwargs.
def variants() -> list[tuple[str, str, Any]]:
    import hdf5plugin

    b2 = hdf5plugin.Blosc2
    return [
        ("none", "none", lambda: {}),
        ("gzip-1 + shuffle", "gzip", lambda: {"compression": "gzip", "compression_opts": 1, "shuffle": True}),
        ("lzf + shuffle", "lzf", lambda: {"compression": "lzf", "shuffle": True}),
        ("blosc2-zstd-1 + shuffle", "", lambda: dict(b2(cname="zstd", clevel=1, filters=b2.SHUFFLE))),
        ("blosc2-zstd-1 + bitshuffle", "", lambda: dict(b2(cname="zstd", clevel=1, filters=b2.BITSHUFFLE))),
        ("blosc2-lz4 + shuffle", "", lambda: dict(b2(cname="lz4", clevel=5, filters=b2.SHUFFLE))),
        ("blosc2-lz4 + bitshuffle", "", lambda: dict(b2(cname="lz4", clevel=5, filters=b2.BITSHUFFLE))),
        ("zstd-1 (plain)", "zstd + FEATDUMP_ZSTD_LEVEL=1", lambda: dict(hdf5plugin.Zstd(clevel=1))),
        ("shuffle + zstd-1 (plain)", "", lambda: {**hdf5plugin.Zstd(clevel=1), "shuffle": True}),
        ("blosc2-zstd-1, no shuffle", "", lambda: dict(b2(cname="zstd", clevel=1, filters=b2.NOFILTER))),
        ("zstd-3 (plain)", "", lambda: dict(hdf5plugin.Zstd(clevel=3))),
        ("zstd, level -3 (plain)", "zstd", lambda: {"compression": 32015, "compression_opts": ((-3) % (1 << 32),)}),
        ("lz4 (plain)", "", lambda: dict(hdf5plugin.LZ4())),
    ]


def feature_maps(model: str, images: list[Path], count: int) -> list[Any]:
    """``count`` images' maps of every level (float32 numpy, N x C x H x W per level)."""
    import numpy as np
    import torch

    from featdump.data.decode import load_rgb
    from featdump.model.backbone import load_backbone

    torch.manual_seed(0)
    bb = load_backbone(model, pretrained=False)
    tf = bb.data.transform()
    outs: list[list[Any]] = [[] for _ in bb.layers]
    with torch.inference_mode():
        for start in range(0, count, 8):
            x = torch.stack([tf(load_rgb(str(p))) for p in images[start : min(count, start + 8)]])
            for k, o in enumerate(bb.model(x)):
                outs[k].append(o.numpy())
    return [np.concatenate(o) for o in outs]


def measure(maps: list[Any], dtype: str, kwargs: dict[str, Any], folder: Path, batch: int = 8) -> tuple[float, float]:
    """(raw MB/s, stored/raw) writing ``maps`` batch by batch with featdump's chunk shapes."""
    import h5py

    from featdump.store.format import chunk_shape

    arrays = [m.astype(dtype) for m in maps]
    raw = sum(a.nbytes for a in arrays)
    path = folder / f"codec-{time.monotonic_ns()}.h5"
    t0 = time.perf_counter()
    with h5py.File(path, "w", libver="earliest") as h5:
        sets = []
        for k, a in enumerate(arrays):
            shape = a.shape[1:]
            sets.append(
                h5.create_dataset(
                    f"l{k}", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                    chunks=chunk_shape(shape, a.itemsize), **kwargs,
                )
            )  # fmt: skip
        n = arrays[0].shape[0]
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            for ds, a in zip(sets, arrays, strict=True):
                ds.resize(stop, axis=0)
                ds[start:stop] = a[start:stop]
            h5.flush()
        stored = sum(ds.id.get_storage_size() for ds in sets)
    seconds = time.perf_counter() - t0
    path.unlink()
    return raw / (1 << 20) / seconds, stored / raw


def codec_table(maps: list[Any], reps: int = 3) -> list[dict[str, Any]]:
    """Median over ``reps`` of each codec, float32 and float16, interleaved."""
    import statistics

    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="featdump-bench-") as tmp:
        for _ in range(reps):
            for label, _name, make in variants():
                for dtype in ("float32", "float16"):
                    rows.setdefault((label, dtype), []).append(measure(maps, dtype, make(), Path(tmp)))
    out = []
    for label, name, _ in variants():
        row: dict[str, Any] = {"codec": label, "--compression": name}
        for dtype in ("float32", "float16"):
            got = rows[(label, dtype)]
            row[f"{dtype}_mb_s"] = statistics.median(m for m, _ in got)
            row[f"{dtype}_ratio"] = statistics.median(r for _, r in got)
        out.append(row)
    return out
