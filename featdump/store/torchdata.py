"""``FeatureFile.torch(...)``: a ``torch.utils.data.Dataset`` over a featdump file's committed rows.
Safe under fork and spawn (it holds the path, never an h5py handle) and chunk-aware
(:meth:`FeatureDataset.__getitems__` reads a batch's rows of each layer in one h5py call).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from featdump.store.rowdata import POOLS, layout_of, skipped_tokens

_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def select_rows(rows: Any, n: int) -> np.ndarray:
    """``rows`` (None, indices, a range/slice, or a boolean mask of length ``n``) -> int64 file rows."""
    if rows is None or isinstance(rows, slice):
        return np.arange(n, dtype=np.int64)[rows or slice(None)]
    if isinstance(rows, torch.Tensor):
        rows = rows.cpu().numpy()
    arr = np.asarray(rows)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"a boolean mask of rows must have one entry per committed row ({n}), not shape {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError("rows must be row indices (ints), a slice, or a boolean mask")
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise IndexError(f"rows {bad[:5].tolist()} out of range: the file has {n} committed rows")
    return (arr % n if n else arr).astype(np.int64)


def read_rows(ds: Any, rows: np.ndarray, shared: bool = False) -> torch.Tensor:
    """Sorted unique ``rows`` of an h5py dataset in one h5py call, as a tensor: one slice read
    straight into the tensor when the rows are consecutive, one slice and a pick when they lie close
    together (at most twice as many rows as asked for), else one selection of exactly those rows.

    ``shared``: put the tensor in shared memory (in a DataLoader worker, so the batch travels to the
    main process without a copy: see :func:`collate`)."""
    count = int(rows.size)
    shape = (count, *(int(s) for s in ds.shape[1:]))
    lo, hi = (int(rows[0]), int(rows[-1]) + 1) if count else (0, 0)
    if hi - lo == count:
        out = empty_tensor(shape, ds.dtype, shared)
        if count:
            ds.read_direct(out.numpy(), np.s_[lo:hi])
        return out
    block = ds[lo:hi][rows - lo] if hi - lo <= 2 * count else ds[rows]
    return torch.from_numpy(block)


def empty_tensor(shape: tuple[int, ...], dtype: Any, shared: bool) -> torch.Tensor:
    tdtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    if shared:
        try:  # what DataLoader's default_collate does in a worker: allocate in shared memory, no copy
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            storage = torch.UntypedStorage._new_shared(nbytes)
            return torch.empty(0, dtype=tdtype).set_(storage, 0, shape)  # C-contiguous
        except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - another torch: a plain tensor
            pass
    return torch.from_numpy(np.empty(shape, dtype=dtype))  # numpy asks for huge pages: fewer page faults


def _stack_views(batch: Sequence[torch.Tensor], *, collate_fn_map: Any = None) -> torch.Tensor:
    """The batch as one view when its tensors are consecutive rows of one block (what
    :meth:`FeatureDataset.__getitems__` hands out for in-order rows), else ``torch.stack``."""
    first = batch[0]
    size = first.numel()
    storage = first.untyped_storage()
    base = first.storage_offset()
    if first.is_contiguous() and all(
        t.untyped_storage().data_ptr() == storage.data_ptr()
        and t.storage_offset() == base + k * size
        and t.shape == first.shape
        and t.dtype == first.dtype
        and t.is_contiguous()
        for k, t in enumerate(batch)
    ):
        return first.new_empty(0).set_(storage, base, (len(batch), *first.shape))  # C-contiguous
    from torch.utils.data._utils.collate import collate_tensor_fn

    stacked: torch.Tensor = collate_tensor_fn(batch, collate_fn_map=collate_fn_map)
    return stacked


def collate(items: Sequence[Any]) -> Any:
    """``DataLoader(..., collate_fn=featdump.collate)``: default_collate, except that a batch of
    in-order rows comes out as a view of the block that was read (no copy, in the worker nor in the
    main process), and that tensors of different shapes under one key (a ragged layer's rows and
    their ``"<layer>.mask"``) are padded with zeros (False) to the batch's largest shape. Also
    :attr:`FeatureDataset.collate`."""
    from torch.utils.data._utils.collate import collate as collate_with
    from torch.utils.data._utils.collate import default_collate_fn_map

    if items and isinstance(items[0], dict):
        items = [dict(item) for item in items]
        for key, first in items[0].items():
            if isinstance(first, torch.Tensor) and any(item[key].shape != first.shape for item in items):
                size = [max(sizes) for sizes in zip(*(item[key].shape for item in items), strict=True)]
                for item in items:  # F.pad's widths run from the last dimension back: (before, after) each
                    widths = [w for have, want in zip(item[key].shape[::-1], size[::-1], strict=True) for w in (0, want - have)]
                    item[key] = torch.nn.functional.pad(item[key], widths)
    return collate_with(items, collate_fn_map={**default_collate_fn_map, torch.Tensor: _stack_views})


def _torch_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be a torch dtype or one of {', '.join(_DTYPES)}, not {dtype!r}")
    return _DTYPES[name]


class FeatureDataset(Dataset):
    """Items are dicts: one tensor per chosen layer (key: the layer name), ``"path"``, ``"row"``, ``"id"``
    (when the file has ids), ``"tile"`` (``y0, x0, y1, x1``, a ``--tiles`` file), ``"meta"`` (``{name: text}``,
    when the file keeps values: ``--keep``, ``--keep-columns``). A ragged layer's row is ``(C, h, w)`` at its own grid, with ``"<layer>.mask"``
    ``(h, w)`` all True (:func:`collate` pads both), unless ``resize`` or ``pool`` make it uniform.
    Built by :meth:`featdump.FeatureFile.torch`; see its docstring.

    Attributes: ``path``, ``layers``, ``rows`` (the file row of each item, int64).
    """

    def __init__(
        self,
        ff: Any,
        layers: str | Sequence[str] | None = None,
        rows: Any = None,
        dtype: Any = None,
        resize: int | tuple[int, int] | None = None,
        pool: str | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        ff.check_sources()
        names = list(ff.layers) if layers is None else [layers] if isinstance(layers, str) else list(layers)
        for name in names:
            ff[name]  # KeyError naming the stored layers
        if not names:
            raise ValueError("layers: choose at least one stored layer")
        if pool == "none":
            pool = None
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be 'avg' or 'max' (or None), not {pool!r}")
        if resize is not None:
            size = (resize, resize) if isinstance(resize, int) else tuple(resize)
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise ValueError(f"resize must be (H, W) of positive ints, not {resize!r}")
            resize = (int(size[0]), int(size[1]))
        if transform is not None and not callable(transform):
            raise TypeError("transform must be a callable taking an item (dict) and returning one")
        self.path = Path(ff.path)
        self.layers = names
        self.rows = select_rows(rows, ff.num_images)
        self.dtype = _torch_dtype(dtype)
        self.resize: tuple[int, int] | None = resize
        self.pool = pool
        self.transform = transform
        self._layouts = {n: layout_of(ff.attrs(n), ff[n].ndim) for n in names}
        self._prefix = {n: skipped_tokens(ff.attrs(n)) for n in names}
        self._opener = type(ff)  # FeatureFile, passed in (no import of the reader from here)
        self._identity = ff.identity  # the file this dataset was made on: every reopen must find it
        self._state: tuple[int, Any] | None = None  # (pid, FeatureFile) of this process

    # ------------------------------------------------------------------ per-process file

    def _file(self) -> Any:
        """This process's file, opened on first use here, and checked before every batch to be the file
        this dataset was made on (one replaced or written to since is a FeatdumpError)."""
        from featdump.errors import FeatdumpError

        state = self._state
        try:
            st = os.stat(self.path)
            if state is None or state[0] != os.getpid():  # first use here, or a forked child
                self._inherited = state  # never closed from a child: the parent still reads through it
                self._state = state = (os.getpid(), self._opener(self.path))
        except (OSError, FeatdumpError) as exc:
            raise FeatdumpError(f"{self.path} cannot be read again ({exc}); make the dataset again") from None
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, state[1].identity[4]) != self._identity:
            raise FeatdumpError(
                f"{self.path} changed after this dataset was made (replaced, or rows written to it); "
                "make the dataset again: featdump.open(path).torch(...)"
            )
        return state[1]

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "_inherited"}  # a parent's handle stays there
        return {**state, "_state": None}

    def close(self) -> None:
        """Close this process's handle (reopened on the next read)."""
        state, self._state = self._state, None
        if state is not None and state[0] == os.getpid():
            state[1].close()

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A batch of items, each layer read once for the batch's sorted unique rows."""
        n = len(self)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(f"index {int(bad[0])} out of range for a dataset of {n} items")
        rows = self.rows[idx % n if n else idx]
        unique, where = np.unique(rows, return_inverse=True)
        ff = self._file()
        in_worker = torch.utils.data.get_worker_info() is not None
        tensors = {}
        for name in self.layers:
            if self._layouts[name] == "ragged":  # each row at its own grid
                tensors[name] = [self._convert(name, torch.from_numpy(np.ascontiguousarray(m))[None])[0] for m in ff.numpy(name, unique)]
                continue
            if ff[name].is_virtual:  # from its sources, a few at a time, each checked to be there
                tensors[name] = self._convert(name, torch.from_numpy(ff.numpy(name, unique)))
                continue
            raw = not self._converts(name, ff[name].dtype)
            tensors[name] = self._convert(name, read_rows(ff[name], unique, shared=in_worker and raw))
        ids, meta = ff.ids, ff.kept
        tiles = ff.tiles(unique) if "tiles" in ff.h5 else None
        masked = [] if self.resize or self.pool else [name for name in self.layers if self._layouts[name] == "ragged"]
        items = []
        for k, row in enumerate(rows.tolist()):
            at = int(where[k])
            item: dict[str, Any] = {name: t[at] for name, t in tensors.items()}  # views of the block
            item.update({f"{name}.mask": torch.ones(item[name].shape[1:], dtype=torch.bool) for name in masked})
            item["path"] = ff.paths[row]
            item["row"] = row
            if ids is not None:
                item["id"] = ids[row]
            if tiles is not None:
                item["tile"] = torch.from_numpy(tiles[at])
            if meta:
                item["meta"] = {name: values[row] for name, values in meta.items()}
            items.append(self.transform(item) if self.transform is not None else item)
        return items

    collate = staticmethod(collate)

    def _converts(self, name: str, stored: Any) -> bool:
        layout = self._layouts[name]
        if self.resize and layout == "NCHW" or self.pool and layout in ("NCHW", "NTD"):
            return True
        return self.dtype is not None and self.dtype != torch.from_numpy(np.empty(0, dtype=stored)).dtype

    def _convert(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """A block of stored rows -> tensors: resize, pool (in float32 at least), then dtype."""
        out_dtype = self.dtype or x.dtype
        layout = self._layouts[name]
        spatial = layout in ("NCHW", "ragged") and x.ndim == 4
        tokens = layout == "NTD" and x.ndim == 3
        if (self.resize and spatial) or (self.pool and (spatial or tokens)):
            if x.dtype not in (torch.float32, torch.float64):
                x = x.float()
            if self.resize and spatial:
                x = torch.nn.functional.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
            if self.pool and (spatial or tokens):
                if tokens:  # over the patch tokens, as `extract --pool` does (timm's global_pool)
                    x = x[:, self._prefix[name] :]
                dims = (1,) if tokens else (2, 3)
                x = x.mean(dim=dims) if self.pool == "avg" else x.amax(dim=dims)
        return x.to(out_dtype)

    def __repr__(self) -> str:
        extra = "".join(
            f", {k}={v!r}" for k, v in (("dtype", self.dtype), ("resize", self.resize), ("pool", self.pool)) if v
        )
        return f"<featdump FeatureDataset {str(self.path)!r}: {len(self)} rows, layers {self.layers}{extra}>"
