"""Reader row: a DataLoader over ``FeatureFile.torch()`` of a merged (virtual) file against plain
sequential h5py reads of the same rows (MB/s of stored data; the ratio should stay >= 0.8).

The file: resnet18 (random weights) levels 1-4 of real JPEGs, extracted as two shards and merged
(virtual, as `featdump merge` makes by default). Both readers go through every row of every layer in
file order, batch by batch; each is timed over several passes once warm (the file in the page
cache, DataLoader workers started: ``persistent_workers``), and the median pass counts.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_merged(images: list[Path], folder: Path, img_size: int, log: Callable[[str], None]) -> Path:
    """Two shards of ``images`` and their virtual merge (made once per image count and size)."""
    folder.mkdir(parents=True, exist_ok=True)
    merged = folder / f"reader-{len(images)}-{img_size}.h5"
    if merged.exists():
        return merged
    listing = folder / f"reader-{len(images)}.txt"
    listing.write_text("".join(f"{p}\n" for p in images), encoding="utf-8")
    out = folder / f"reader-{len(images)}-{img_size}-shards.h5"
    for i in (0, 1):
        log(f"  extracting shard {i}/2 ({len(images) // 2} images, {img_size} px)")
        subprocess.run(
            [sys.executable, "-m", "featdump", "extract", "resnet18", str(listing), "-o", str(out), "--shard", f"{i}/2",
             "--no-pretrained", "--img-size", str(img_size), "--device", "cpu", "--quiet", "--overwrite"],
            check=True,
        )  # fmt: skip
    shards = sorted(folder.glob(f"reader-{len(images)}-{img_size}-shards.shard-*.h5"))
    subprocess.run([sys.executable, "-m", "featdump", "merge", *map(str, shards), "-o", str(merged), "-q"], check=True)
    return merged


def plain_pass(path: Path, layers: list[str], n: int, batch: int) -> int:
    """Sequential h5py reads of every row, ``batch`` rows at a time; the bytes read."""
    import h5py

    total = 0
    with h5py.File(path, "r") as h5:
        sets = [h5["features"][name] for name in layers]
        for start in range(0, n, batch):
            for ds in sets:
                total += ds[start : min(n, start + batch)].nbytes
    return total


def loader_pass(loader: Any, layers: list[str]) -> int:
    total = 0
    for item in loader:
        total += sum(item[name].numel() * item[name].element_size() for name in layers)
    return total


def measure_reader(images: list[Path], cache: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Plain h5py against DataLoaders over ``.torch()`` (collate_fn=its ``collate``) with 0 and 2
    workers. Workers hand batches over in shared memory, whose first touch is the cost to watch
    (``shm_mb_s``: filling fresh shared memory on this machine)."""
    import torch
    from torch.utils.data import DataLoader

    import featdump
    from featdump.store.torchdata import empty_tensor

    img_size = 128 if quick else 224
    passes = 2 if quick else 5
    batch = 32
    path = make_merged(images, cache / "reader", img_size, log)
    with featdump.open(path) as ff:
        layers, n = list(ff.layers), ff.num_images
        ds = ff.torch()
    loaders = {
        f"{w} workers": DataLoader(
            ds, batch_size=batch, num_workers=w, collate_fn=ds.collate,
            **({"persistent_workers": True, "prefetch_factor": 4} if w else {}),
        )  # fmt: skip
        for w in (0, 2)
    }
    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in loaders}}
    torch.set_num_threads(1)
    nbytes = plain_pass(path, layers, n, batch)  # warm: the page cache holds the shards
    for loader in loaders.values():
        loader_pass(loader, layers)  # warm: the workers are started and have opened the file
    for _ in range(passes):  # interleaved, so drifting load hits all alike
        t0 = time.perf_counter()
        plain_pass(path, layers, n, batch)
        times["plain"].append(time.perf_counter() - t0)
        for key, loader in loaders.items():
            t0 = time.perf_counter()
            got = loader_pass(loader, layers)
            times[key].append(time.perf_counter() - t0)
            assert got == nbytes, (key, got, nbytes)
    loaders.clear()
    t0 = time.perf_counter()
    shm = empty_tensor((nbytes // 4,), "float32", shared=True)
    shm.numpy()[:] = 0
    shm_s = time.perf_counter() - t0
    del shm
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "what": f"resnet18 levels 1-4 at {img_size} px, {n} rows merged from 2 shards (virtual), batch {batch}, "
        f"{nbytes / 1e6:.0f} MB per pass, median of {passes}",
        "mb": nbytes / 1e6,
        "mb_s": {k: nbytes / 1e6 / v for k, v in med.items()},
        "ratio": {k: med["plain"] / v for k, v in med.items() if k != "plain"},
        "seconds": times,
        "shm_mb_s": nbytes / 1e6 / shm_s,
    }
