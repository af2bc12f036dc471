"""Whole chunks written straight into HDF5 (``write_direct_chunk``), prepared by a thread pool.

h5py's ``ds[a:b] = arr`` filters one chunk at a time in the calling thread. Here the writer thread
hands each batch's full chunks to a pool that casts them, lays them out in chunk order (edge chunks
padded with the fill value, 0) and runs the dataset's own filter pipeline (:meth:`ChunkCodec._step`),
producing the bytes HDF5 would write (docs/performance.md); ctypes, zlib and numpy release the GIL.
A dataset with any other filter (fletcher32, scale-offset, an unknown plugin) is written through h5py.
Crash safety is unchanged: ``write_direct_chunk`` goes through the same JournaledFile.

Rows that do not fill a chunk stay in a per-dataset *tail* in memory, written through h5py at every
commit (:meth:`ChunkWriter.flush`); the whole chunk replaces them later, and resume reads them back.
"""

from __future__ import annotations

import ctypes
import functools
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import product
from typing import Any

SHUFFLE, DEFLATE, LZF = 2, 1, 32000
_FLAG_OPTIONAL = 1

_FILTER_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_uint,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_uint),
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.c_void_p),
)


class _H5ZClass2(ctypes.Structure):  # H5Z_class2_t (H5Zpublic.h)
    _fields_ = [
        ("version", ctypes.c_int),
        ("id", ctypes.c_int),
        ("encoder_present", ctypes.c_uint),
        ("decoder_present", ctypes.c_uint),
        ("name", ctypes.c_char_p),
        ("can_apply", ctypes.c_void_p),
        ("set_local", ctypes.c_void_p),
        ("filter", ctypes.c_void_p),
    ]


@functools.cache
def _malloc_free() -> Any:
    lib = ctypes.CDLL(None)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    return lib


@functools.cache
def c_filter(code: int) -> Any:
    """The C function HDF5 would call for filter ``code`` (an ``H5Z_func_t``), or None."""
    try:
        if code == LZF:
            import h5py.h5z

            lib = ctypes.CDLL(h5py.h5z.__file__)
            return _FILTER_FUNC(int(ctypes.cast(lib.lzf_filter, ctypes.c_void_p).value or 0))
        import hdf5plugin

        names = {v: k for k, v in hdf5plugin.FILTERS.items()}
        if code in names:
            lib = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, f"libh5{names[code]}.so"))
            lib.H5PLget_plugin_info.restype = ctypes.POINTER(_H5ZClass2)
            info = lib.H5PLget_plugin_info().contents
            if info.version == 1 and info.id == code and info.encoder_present and info.filter:
                return _FILTER_FUNC(info.filter)
    except (ImportError, OSError, AttributeError, ValueError):
        pass
    return None


def _run_c_filter(fn: Any, cd_values: Sequence[int], data: Any) -> bytes | None:
    """Call an HDF5 filter function the way HDF5's pipeline does (buffers from malloc; the filter
    frees the input and returns a new one). None when it fails."""
    libc = _malloc_free()
    src = _as_bytes(data)
    n = src.size
    raw = libc.malloc(max(1, n))
    if not raw:
        raise MemoryError("malloc failed preparing an HDF5 chunk")
    buf = ctypes.c_void_p(raw)
    try:
        ctypes.memmove(buf, src.ctypes.data, n)
        size = ctypes.c_size_t(n)
        cd = (ctypes.c_uint * max(1, len(cd_values)))(*cd_values)
        got = fn(0, len(cd_values), cd, n, ctypes.byref(size), ctypes.byref(buf))
        return ctypes.string_at(buf, got) if got else None
    finally:
        libc.free(buf)


def _as_bytes(data: Any) -> Any:
    """A flat uint8 numpy view of a contiguous array or bytes-like object (no copy)."""
    import numpy as np

    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _shuffle(data: Any, itemsize: int) -> Any:
    import numpy as np

    raw = _as_bytes(data)
    n = raw.size // itemsize * itemsize
    out = np.empty(raw.size, dtype=np.uint8)
    out[:n].reshape(itemsize, -1)[:] = raw[:n].reshape(-1, itemsize).T
    out[n:] = raw[n:]  # HDF5 copies leftover bytes as they are
    return out


class ChunkCodec:
    """A dataset's filter pipeline, run in Python threads: ``encode(bytes) -> (filter_mask, bytes)``;
    ``supported`` is False when a filter cannot be reproduced exactly (then h5py writes that dataset)."""

    def __init__(self, ds: Any) -> None:
        plist = ds.id.get_create_plist()
        self.itemsize = ds.dtype.itemsize
        self.steps: list[tuple[int, int, tuple[int, ...], Callable[[Any], Any]]] = []
        self.supported = True
        self.names: list[str] = []
        for i in range(plist.get_nfilters()):
            code, flags, values, name = plist.get_filter(i)
            values = tuple(int(v) for v in values)
            self.names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else str(name))
            step = self._step(code, values)
            if step is None:
                self.supported = False
                return
            self.steps.append((i, flags, values, step))

    def _step(self, code: int, values: tuple[int, ...]) -> Callable[[Any], Any] | None:
        if code == SHUFFLE:
            size = values[0] if values else self.itemsize
            return lambda data: _shuffle(data, size)
        if code == DEFLATE:
            level = values[0] if values else 6
            return lambda data: zlib.compress(data, level)
        fn = c_filter(code)
        if fn is None:
            return None
        return lambda data: _run_c_filter(fn, values, data)

    def encode(self, data: Any) -> tuple[int, Any]:
        mask = 0
        for index, flags, _, step in self.steps:
            out = step(data)
            if out is None:  # the filter failed: HDF5 skips an optional one and marks it skipped
                if not flags & _FLAG_OPTIONAL:
                    raise OSError(f"HDF5 filter {self.names[index]} failed on a chunk")
                mask |= 1 << index
                continue
            data = out
        return mask, data


class _Lane:
    """One dataset: its chunk grid, codec and the rows of its last, unfilled chunk."""

    def __init__(self, ds: Any) -> None:
        import numpy as np

        rows = int(ds.shape[0])
        self.ds = ds
        self.chunks = tuple(ds.chunks)
        self.cr = self.chunks[0]
        self.codec = ChunkCodec(ds)
        self.direct = self.codec.supported
        self.dtype = ds.dtype
        self.tail_start = rows // self.cr * self.cr
        self.tail = ds[self.tail_start : rows] if rows > self.tail_start else np.empty((0, *ds.shape[1:]), ds.dtype)
        self.tail_dirty = False
        grid = [range(0, size, step) for size, step in zip(ds.shape[1:], self.chunks[1:], strict=True)]
        self.blocks = list(product(*grid))


class ChunkWriter:
    """Writes batches of rows to a group of datasets as whole chunks (see the module's notes). Not
    thread-safe: the Store's writer thread calls it; ``threads`` more (if > 1) prepare chunks."""

    def __init__(self, datasets: Sequence[Any], threads: int = 1) -> None:
        self.lanes = {ds.name: _Lane(ds) for ds in datasets}  # each continues after the rows it holds now
        self.threads = max(1, int(threads))
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="featdump-chunks") if self.threads > 1 else None

    def write(self, batch: Sequence[tuple[Any, Any, int]]) -> None:
        """Rows ``start .. start + len(arr)`` of each ``(dataset, arr, start)``; the datasets already
        have that many rows (resized by the caller)."""
        import numpy as np

        jobs: list[tuple[Any, tuple[int, ...], Any]] = []  # (dataset, offset, prepared or future)
        for ds, arr, start in batch:
            lane = self.lanes[ds.name]
            if not lane.direct:
                ds[start : start + len(arr)] = arr
                continue
            if start != lane.tail_start + len(lane.tail):
                raise ValueError(f"{ds.name}: rows must be appended in order")
            arr = np.asarray(arr)
            data = np.concatenate([lane.tail, arr.astype(lane.dtype, copy=False)]) if len(lane.tail) else arr
            full = len(data) // lane.cr * lane.cr
            for r in range(0, full, lane.cr):
                for block in lane.blocks:
                    offset = (lane.tail_start + r, *block)
                    piece = data[(slice(r, r + lane.cr), *(slice(b, b + c) for b, c in zip(block, lane.chunks[1:], strict=True)))]
                    if self.pool is not None and lane.codec.steps:
                        jobs.append((ds, offset, self.pool.submit(_prepare, lane, piece)))
                    else:
                        jobs.append((ds, offset, _prepare(lane, piece)))
            lane.tail = np.array(data[full:], dtype=lane.dtype, copy=True)
            lane.tail_start += full
            lane.tail_dirty = len(lane.tail) > 0
        for ds, offset, item in jobs:
            mask, payload = item.result() if isinstance(item, Future) else item
            ds.id.write_direct_chunk(offset, payload, mask)

    def flush(self) -> None:
        """Write every unfilled chunk's rows through h5py, so that a commit holds all rows."""
        for lane in self.lanes.values():
            if lane.tail_dirty:
                lane.ds[lane.tail_start : lane.tail_start + len(lane.tail)] = lane.tail
                lane.tail_dirty = False

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def _prepare(lane: _Lane, piece: Any) -> tuple[int, Any]:
    """Cast, lay out (pad an edge chunk) and filter one chunk."""
    import numpy as np

    piece = np.ascontiguousarray(piece, dtype=lane.dtype)
    if piece.shape != lane.chunks:
        full = np.zeros(lane.chunks, dtype=lane.dtype)  # the fill value
        full[tuple(slice(0, s) for s in piece.shape)] = piece
        piece = full
    if not lane.codec.steps:
        return 0, piece
    return lane.codec.encode(piece)
