"""Ragged featdump files written straight through ``Store`` (no model): rows of different grids.

Layer ``map`` is ragged (5 channels, row i at its own (h, w)), ``vec`` a fixed (6,) layer. Values
are seeded per row, so any two writes of the same rows hold the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featdump.data.batching import Rows
from featdump.model.layers import LayerInfo

C = 5
ATTRS = {"format": "featdump", "input_size": [3, 64, 64]}


def layers() -> list[LayerInfo]:
    return [
        LayerInfo("map", "map", 1, C, 8, (C, 8, 8), attrs={"layout": "ragged"}),
        LayerInfo("vec", "vec", 2, 6, 16, (6,)),
    ]


GRIDS = [(1, 2), (2, 5), (3, 3), (2, 4), (3, 1)]


def grid(i: int) -> tuple[int, int]:
    return GRIDS[i % len(GRIDS)]


def row_map(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal((C, *grid(i))).astype(np.float32)


def row_vec(i: int) -> np.ndarray:
    return np.full(6, i, np.float32)


def geometry(i: int) -> list[float]:
    h, w = grid(i)
    return [h * 8 * 3.0, w * 8 * 2.0, 3.0, 2.0, 0.0, 0.0]  # the input was (8h, 8w), the image 3x / 2x it


def rows(i: int, j: int, done: int | None = None) -> Rows:
    """Rows ``i .. j`` as one batch record."""
    idx = range(i, j)
    return Rows(
        [[row_map(k) for k in idx], np.stack([row_vec(k) for k in idx])],
        [f"img{k:03d}.png" for k in idx],
        [],
        j if done is None else done,
        geometry=np.array([geometry(k) for k in idx]),
    )


def write(path: Path, n: int, batch: int = 3, *, first: int = 0, dtype: str = "float32", compression: str = "none",
          pool: str = "none", attrs: dict[str, Any] | None = None, store: Any = None, stop_after: int | None = None) -> Any:
    """Rows ``first .. n`` (from where ``store`` stands, when given) in batches; the open store."""
    from featdump.store.sink import Store

    store = store or Store.create(path, {**ATTRS, **(attrs or {})}, layers(), pool=pool, dtype=dtype, compression=compression)
    for k, i in enumerate(range(first + store.progress.inputs_done, n, batch)):
        if stop_after is not None and k == stop_after:
            return store
        store.append(rows(i, min(n, i + batch), min(n, i + batch) - first))
    return store


def make(path: Path, n: int = 10, **kw: Any) -> Path:
    store = write(path, n, **kw)
    store.finish()
    store.close()
    return path


def shards(folder: Path, n: int = 10) -> list[Path]:
    """The rows ``0 .. n`` as the two shard files of one run (``--shard 0/2`` and ``1/2``)."""
    half = n // 2
    run = {"list_digest": "d", "list_size": n}
    return [
        make(folder / "r.shard-0-of-2.h5", half, attrs={**run, "shard": [0, 2], "num_inputs": half}),
        make(folder / "r.shard-1-of-2.h5", n, first=half, attrs={**run, "shard": [1, 2], "num_inputs": n - half}),
    ]
