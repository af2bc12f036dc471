"""The host path's ceiling: featdump's real pipeline (source discovery, the loader's decoding, the
writer, commits) with the forward stage replaced, here in bench code only, by one that returns
precomputed outputs of the model's shapes at once. What remains is what a GPU node's host must do
per image; its rate is the most any GPU can get out of featdump on this machine.

Reported per case (resnet50 all levels; resnet50 layer3+layer4; lite0 all levels; float16):
host-path img/s; decode img/s with 1 and 2 decoding workers; writer MiB/s and raw write() MiB/s in
the same folder in the same run; the host work per image in CPU-ms, split into decode+resize+to-tensor
(the loader alone, per worker), conversion to float16 NCHW (torch, from a float32 NHWC batch as a
device would hand it over) and write (the Store alone, per image). Projection on paper for a 16-core GPU node.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.writer import LITE0, RESNET50, batch_arrays, layers_for, raw_rate, store_rate
from featdump.data.batching import Rows

R50_L34 = {k: v for k, v in RESNET50.items() if k in ("layer3", "layer4")}
CASES = {"resnet50 (all levels)": RESNET50, "resnet50 layer3+layer4": R50_L34, "lite0 (all levels)": LITE0}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cfg(folder: Path, out: Path, workers: int) -> Any:
    from featdump.configure import resolve

    return resolve({"model": "resnet50", "inputs": (str(folder),), "output": str(out), "pretrained": False,
                    "dtype": "float16", "workers": workers, "device": "cpu"})  # fmt: skip


def _backbone(shapes: dict[str, tuple[int, ...]]) -> Any:
    """What the loader needs of a backbone (its data config) without building a model."""
    from featdump.model.backbone import load_backbone

    return load_backbone("resnet50", out_indices=(3,), pretrained=False)


def decode_rate(folder: Path, backbone: Any, workers: int, batch: int = 32) -> tuple[float, float]:
    """(img/s, CPU-ms per image) of the loader alone: reading, decoding, resize, to-tensor, batching."""
    from bench.throughput import torch_threads
    from featdump.data.batching import Loader
    from featdump.data.sources import open_source

    refs = open_source((str(folder),)).select(0, 1).refs
    cfg = _cfg(folder, folder / "unused.h5", workers)
    # one torch thread, as in a GPU run's DataLoader workers (torch sets 1 in each): otherwise one
    # worker's resize and to-tensor already spread over every core and the per-worker figure means nothing
    with torch_threads(1):
        c0, t0, n = _cpu(), time.perf_counter(), 0
        for b in Loader(refs, backbone, cfg, _cpu_device(), batch, workers, 2, 0):
            n += len(b.positions)
        return n / (time.perf_counter() - t0), (_cpu() - c0) * 1000 / max(1, n)


def _cpu_device() -> Any:
    import torch

    return torch.device("cpu")


def convert_ms(shapes: dict[str, tuple[int, ...]], batch: int = 32) -> float:
    """CPU-ms per image for the cast to float16 NCHW (from float32 channels_last) of every level."""
    import torch

    from featdump.run.forward import to_storage

    xs = [torch.randn(batch, *s).contiguous(memory_format=torch.channels_last) for s in shapes.values()]
    layers = layers_for(shapes)
    c0 = _cpu()
    for _ in range(3):
        [to_storage(x, layer, "none", torch.float16).numpy() for x, layer in zip(xs, layers, strict=True)]
    return (_cpu() - c0) * 1000 / (3 * batch)


def host_rate(folder: Path, backbone: Any, shapes: dict[str, tuple[int, ...]], out: Path, workers: int,
              compression: str = "none", batch: int = 32) -> float:
    """img/s of discovery + loader + null forward + writer + commits (the job's loop)."""
    from featdump.data.batching import Loader
    from featdump.data.sources import open_source
    from featdump.run.writer import Writer
    from featdump.store.sink import Store

    outputs = batch_arrays(shapes, batch)
    t0 = time.perf_counter()
    refs = open_source((str(folder),)).select(0, 1).refs
    cfg = _cfg(folder, out, workers)
    for p in (out, Path(f"{out}-journal")):
        p.unlink(missing_ok=True)
    store = Store.create(out, {"format": "featdump"}, layers_for(shapes), pool="none", dtype="float16", compression=compression)
    writer = Writer(store, threads=max(1, (os.cpu_count() or 2) - workers - 1))
    n = 0
    for b in Loader(refs, backbone, cfg, _cpu_device(), batch, workers, 2, 0):
        k = len(b.positions)
        feats = [a[:k] for a in outputs]  # the null forward: precomputed outputs of the model's shapes
        writer.put(Rows(feats, b.paths, [], n + k))
        n += k
    writer.close()
    store.finish()
    store.close()
    out.unlink()
    return n / (time.perf_counter() - t0)


def write_ms(shapes: dict[str, tuple[int, ...]], folder: Path, batches: int = 4, batch: int = 32) -> tuple[float, float]:
    """(MiB/s, CPU-ms per image) of the Store alone, whole chunks, uncompressed."""
    arrays = batch_arrays(shapes, batch)
    c0 = _cpu()
    rate = store_rate(folder, shapes, arrays, batches)
    return rate, (_cpu() - c0) * 1000 / (batches * batch)


def host_table(jpegs: list[Path], reps: int = 1) -> dict[str, Any]:
    from bench.images import link_many

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        folder = link_many(where / "imgs", jpegs, len(jpegs))
        backbone = _backbone(RESNET50)
        dec = {w: [decode_rate(folder, backbone, w) for _ in range(reps)] for w in (1, 2)}
        d1 = statistics.median(r for r, _ in dec[1])
        d2 = statistics.median(r for r, _ in dec[2])
        decode_cpu_ms = statistics.median(ms for _, ms in dec[1])
        raw = statistics.median(raw_rate(where, batch_arrays(RESNET50, 16), 3) for _ in range(reps))
        rows = []
        for label, shapes in CASES.items():
            mb = sum(2 * math.prod(s) for s in shapes.values()) / 1e6
            wr, wms = write_ms(shapes, where)
            conv = convert_ms(shapes)
            host = statistics.median(host_rate(folder, backbone, shapes, where / "h.h5", 2) for _ in range(reps))
            hostz = statistics.median(host_rate(folder, backbone, shapes, where / "h.h5", 2, "zstd") for _ in range(reps))
            rows.append({"case": label, "mb_per_image": round(mb, 2), "host_img_s": round(host, 1), "host_zstd_img_s": round(hostz, 1),
                         "writer_mib_s": round(wr, 1), "write_cpu_ms": round(wms, 2), "convert_cpu_ms": round(conv, 2)})  # fmt: skip
    return {"images": len(jpegs), "decode_1": round(d1, 1), "decode_2": round(d2, 1), "decode_cpu_ms": round(decode_cpu_ms, 2),
            "raw_write_mib_s": round(raw, 1), "rows": rows}  # fmt: skip


def projection(t: dict[str, Any], cores: int = 16) -> list[str]:
    """On paper: a 16-core GPU node, resnet50 layer3+layer4 float16, from this machine's CPU-ms."""
    row = next(r for r in t["rows"] if r["case"] == "resnet50 layer3+layer4")
    dec = t["decode_cpu_ms"]
    per_image = dec + row["convert_cpu_ms"] + row["write_cpu_ms"]
    usable = cores - 2  # the main thread (loop, device launches) and the writer's own thread
    cpu_decode = usable * 1000 / per_image
    zstd_ms = row["mb_per_image"] / 0.45 if row["mb_per_image"] else 0  # ~450 MB/s per core at zstd -3 (docs/performance.md)
    cpu_decode_z = usable * 1000 / (per_image + zstd_ms)
    # --decode gpu: the host reads files (~0.3 ms) and writes; the conversion runs on the device there
    gpu_decode = usable * 1000 / (row["write_cpu_ms"] + 0.3)
    gpu_decode_z = usable * 1000 / (row["write_cpu_ms"] + 0.3 + zstd_ms)
    return [
        f"Projection on paper, {cores}-core GPU node, resnet50 layer3+layer4 float16 ({row['mb_per_image']} MB/image), "
        f"from this machine's CPU-ms per image ({dec} decode+resize+to-tensor, {row['convert_cpu_ms']} conversion, "
        f"{row['write_cpu_ms']} write; zstd -3 at ~450 MB/s per core) with {usable} cores for host work:",
        "",
        "| decoding | no compression | zstd |",
        "|---|---:|---:|",
        f"| CPU (exact) | ~{cpu_decode:.0f} img/s | ~{cpu_decode_z:.0f} img/s |",
        f"| --decode gpu (host reads files and writes; conversion on the device) | ~{gpu_decode:.0f} img/s | ~{gpu_decode_z:.0f} img/s |",
        "",
        f"Disk: at {row['mb_per_image']} MB/image, 1000 img/s needs {row['mb_per_image'] * 1000:.0f} MB/s uncompressed.",
    ]


def markdown(t: dict[str, Any]) -> list[str]:
    lines = [
        f"### Host path ceiling (null forward: precomputed outputs; featdump's discovery, loader, writer, commits; "
        f"{t['images']} JPEGs, float16)",
        "",
        f"Decoding (loader alone, resnet50's transform): 1 worker {t['decode_1']} img/s, 2 workers {t['decode_2']} img/s "
        f"({t['decode_2'] / t['decode_1']:.2f}x); {t['decode_cpu_ms']} CPU-ms per image (decode, resize, to-tensor). "
        f"Raw write() in the same folder: {t['raw_write_mib_s']} MiB/s.",
        "",
        "| outputs | MB/image | host path img/s | with zstd | writer MiB/s (x raw) | CPU-ms/image: conversion | write |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in t["rows"]:
        lines.append(f"| {r['case']} | {r['mb_per_image']} | {r['host_img_s']} | {r['host_zstd_img_s']} | "
                     f"{r['writer_mib_s']} ({r['writer_mib_s'] / t['raw_write_mib_s']:.2f}) | {r['convert_cpu_ms']} | {r['write_cpu_ms']} |")  # fmt: skip
    return lines + [""] + projection(t) + [""]


if __name__ == "__main__":  # python -m bench.hostpath [images]
    import sys

    from bench.images import make_jpegs

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    jpegs = make_jpegs(Path(__file__).resolve().parent / "results" / "cache" / "jpegs", n)[:n]
    print("\n".join(markdown(host_table(jpegs))))
