"""Helpers shared by the readers on top of :class:`~featdump.store.reader.FeatureFile` (``.torch()``,
export, stats) and merge: a stored layer's layout, pooling of stored rows, blocks of rows to read. No torch here."""

from __future__ import annotations

from typing import Any

import numpy as np

POOLS = ("avg", "max")  # what the readers (.torch(), export) pool stored maps with
BLOCK_BYTES = 32 << 20  # stored bytes read per step (export, merge --copy)


def layout_of(attrs: dict[str, Any], ndim: int) -> str:
    """A stored layer's layout, ``NC`` (pooled), ``NTD`` (tokens), ``NCHW`` or ``ragged`` (cells, C:
    each row at its own grid), from its attribute or rank."""
    layout = str(attrs.get("layout", "") or "")
    if layout in ("NC", "NTD", "NCHW", "ragged"):
        return layout
    return {2: "NC", 3: "NTD", 4: "NCHW"}.get(ndim, "NC")


def skipped_tokens(attrs: dict[str, Any]) -> int:
    """How many leading tokens pooling leaves out: a token layer's class/register tokens; none of a
    ``--tokens both`` ``<name>.prefix`` dataset, which holds only those (its pool: over them)."""
    return 0 if attrs.get("part") == "prefix" else int(attrs.get("num_prefix_tokens", 0) or 0)


def pool_block(block: np.ndarray, layout: str, pool: str, prefix: int = 0) -> np.ndarray:
    """Stored rows -> (rows, C) float32: mean or max over H×W, or over the patch tokens of a token
    layer (skipping ``prefix`` class/register tokens, as ``extract --pool`` does)."""
    x = block.astype(np.float32, copy=False)
    if layout == "NC":
        return x
    x, axes = (x[:, prefix:], (1,)) if layout == "NTD" else (x, tuple(range(2, x.ndim)))
    return x.mean(axis=axes, dtype=np.float32) if pool == "avg" else x.max(axis=axes)


def pool_cells(cells: np.ndarray, sizes: np.ndarray, pool: str) -> np.ndarray:
    """A ragged layer's consecutive rows, ``cells`` (sum of ``sizes``, C) -> (rows, C) float32: mean
    or max over each row's ``sizes[i]`` cells."""
    x = cells.astype(np.float32, copy=False)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    if pool == "max":
        return np.maximum.reduceat(x, starts, axis=0)
    return np.add.reduceat(x, starts, axis=0, dtype=np.float32) / sizes[:, None].astype(np.float32)


def row_blocks(ds: Any, start: int, stop: int, cells: Any = None, chunk_rows: int = 0) -> Any:
    """``(a, b)`` row ranges covering ``[start, stop)``, each about :data:`BLOCK_BYTES` of stored data
    (a ragged layer's rows: at most that many cells each) and whole chunks: ``chunk_rows`` (zarr's),
    else the dataset's row chunks."""
    most = int(cells[start:stop, 1:].prod(axis=1).max()) if cells is not None and stop > start else 1
    row_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize * most)
    step = max(1, BLOCK_BYTES // row_bytes)
    chunk_rows = chunk_rows or (int(ds.chunks[0]) if ds.chunks else 1)
    if chunk_rows > 1:
        step = max(chunk_rows, step - step % chunk_rows)
    for a in range(start, stop, step):
        yield a, min(stop, a + step)
