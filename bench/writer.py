"""The writer against the disk: featdump's Store (whole chunks, 1 or more preparing threads,
with and without zstd) next to plain ``os.write`` of the same bytes in the same folder.

Each figure is MiB of feature arrays per second from the first append to the closed file (commits,
fsyncs and the journal included); the raw figure writes the same bytes with ``os.write`` in 8 MiB
calls (page cache; the first ratio uses it), and once more with an ``fsync``
once a second and at the end: the Store commits (and fsyncs) at that cadence, so that is the
like-for-like yardstick of a writer that survives a power cut (second ratio). "commits without
fsync" is the Store with its fsyncs dropped (bench only): the writer's own cost against raw
write(). Runs are interleaved (in a rotating order) and repeated; medians are reported, so the ratios come from one
run on one disk.

    python -m bench.writer [batches] [reps]     # or: make bench (section "writer")
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from featdump.data.batching import Rows

# resnet50's five levels at 224x224 (float16 storage); layer3 + layer4 are the GPU check's levels
RESNET50 = {"act1": (64, 112, 112), "layer1": (256, 56, 56), "layer2": (512, 28, 28), "layer3": (1024, 14, 14), "layer4": (2048, 7, 7)}
# tf_efficientnet_lite0's five levels at 224x224
LITE0 = {"blocks.0": (16, 112, 112), "blocks.1": (24, 56, 56), "blocks.2": (40, 28, 28), "blocks.4": (112, 14, 14), "blocks.6": (320, 7, 7)}


def layers_for(shapes: dict[str, tuple[int, ...]]) -> list[Any]:
    from featdump.model.layers import LayerInfo

    return [LayerInfo(name, name, i, s[0], 2 ** (i + 1), s) for i, (name, s) in enumerate(shapes.items())]


def batch_arrays(shapes: dict[str, tuple[int, ...]], batch: int, dtype: str = "float16", seed: int = 0) -> list[Any]:
    """Post-ReLU-like maps (about half exact zeros), so that zstd sees realistic data."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for s in shapes.values():
        a = rng.standard_normal((batch, *s), dtype=np.float32)
        np.maximum(a, 0, out=a)
        out.append(a.astype(dtype))
    return out


def store_rate(folder: Path, shapes: dict[str, tuple[int, ...]], arrays: list[Any], batches: int, *,
               compression: str = "none", threads: int = 1, dtype: str = "float16",
               durable: bool = True) -> float:
    """MiB/s of ``batches`` appends of ``arrays`` through a Store (create .. close).

    ``durable=False`` (bench only) drops the commits' fsyncs: the writer's own cost, as raw write()."""
    from featdump.store.sink import Store

    path = folder / "store.h5"
    for p in (path, Path(f"{path}-journal")):
        p.unlink(missing_ok=True)
    b = len(arrays[0])
    nbytes = sum(a.nbytes for a in arrays) * batches
    t0 = time.perf_counter()
    store = Store.create(path, {"format": "featdump"}, layers_for(shapes), pool="none", dtype=dtype, compression=compression)
    store.write_threads = threads
    store.jf.durable = durable
    for k in range(batches):
        store.append(Rows(arrays, [f"p{k * b + i}" for i in range(b)], [], (k + 1) * b))
    store.finish()
    store.close()
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds / (1 << 20)


def raw_rate(folder: Path, arrays: list[Any], batches: int, fsync: bool = False, every: float | None = None) -> float:
    """MiB/s of plain os.write of the same bytes (8 MiB calls); ``fsync``: one at the end, and
    with ``every`` one after any batch that ends ``every`` seconds after the last (the Store's
    commit cadence: the same durability)."""
    path = folder / "raw.bin"
    views = [memoryview(a).cast("B") for a in arrays]
    nbytes = sum(len(v) for v in views) * batches
    step = 8 << 20
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    last = t0
    try:
        for _ in range(batches):
            for v in views:
                for i in range(0, len(v), step):
                    os.write(fd, v[i : i + step])
            if every is not None and time.perf_counter() - last >= every:
                os.fsync(fd)
                last = time.perf_counter()
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds / (1 << 20)


def writer_table(folder: Path | None = None, *, batch: int = 16, batches: int = 6, reps: int = 3,
                 zstd_threads: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Medians of interleaved runs; ratios to raw write() from the same run."""
    import hdf5plugin  # noqa: F401

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        where = Path(tmp)
        arrays = batch_arrays(RESNET50, batch)
        variants: dict[str, Any] = {
            "raw write()": lambda: raw_rate(where, arrays, batches),
            "raw write(), fsync each second": lambda: raw_rate(where, arrays, batches, fsync=True, every=1.0),
            "Store, whole chunks": lambda: store_rate(where, RESNET50, arrays, batches),
            "Store, whole chunks, commits without fsync": lambda: store_rate(where, RESNET50, arrays, batches, durable=False),
        }
        for t in zstd_threads:
            variants[f"Store zstd, whole chunks, {t} thread{'s' if t > 1 else ''}"] = (
                lambda t=t: store_rate(where, RESNET50, arrays, batches, compression="zstd", threads=t)
            )
        runs: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for rep in range(reps):  # a rotating order: no variant always runs first or after the same one
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                runs[name].append(variants[name]())
    med = {k: statistics.median(v) for k, v in runs.items()}
    raw, durable = med["raw write()"], med["raw write(), fsync each second"]
    rows = [{"writer": k, "mib_s": round(v, 1), "x_raw": round(v / raw, 2), "x_durable": round(v / durable, 2),
             "runs": [round(x, 1) for x in runs[k]]} for k, v in med.items()]
    z1 = med.get("Store zstd, whole chunks, 1 thread")
    z2 = med.get("Store zstd, whole chunks, 2 threads")
    return {
        "rows": rows,
        "batch": batch,
        "batches": batches,
        "reps": reps,
        "mib": round(sum(a.nbytes for a in arrays) * batches / (1 << 20), 1),
        "zstd_2_over_1": round(z2 / z1, 2) if z1 and z2 else None,
        "folder": str(folder or tempfile.gettempdir()),
    }


def markdown(table: dict[str, Any]) -> list[str]:
    lines = [
        f"### Writer vs disk (resnet50 maps, all levels, float16; batches of {table['batch']} x {table['batches']}, "
        f"{table['mib']} MiB per run, medians of {table['reps']}, in {table['folder']})",
        "",
        "| writer | MiB/s | × raw write() | × raw write() with the Store's fsyncs | runs |",
        "|---|---:|---:|---:|---|",
    ]
    for r in table["rows"]:
        lines.append(f"| {r['writer']} | {r['mib_s']} | {r['x_raw']} | {r['x_durable']} | {', '.join(map(str, r['runs']))} |")
    if table.get("zstd_2_over_1"):
        lines += ["", f"zstd, 2 preparing threads over 1: **{table['zstd_2_over_1']}×**."]
    return lines + [""]


if __name__ == "__main__":  # python -m bench.writer [batches] [reps]
    import sys

    t = writer_table(batches=int(sys.argv[1]) if len(sys.argv) > 1 else 6, reps=int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    print("\n".join(markdown(t)))
