"""Reading a featdump file: :class:`FeatureFile`, returned by ``featdump.open(path)``; it reads the
journal's last commit and checks a merged file's sources before any row is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featdump.errors import FeatdumpError
from featdump.store.describe import check_virtual, open_checked
from featdump.store.format import read_attr, read_text
from featdump.store.vds import read_rows, source_spans

if TYPE_CHECKING:
    import h5py
    import numpy as np


class FeatureFile(AbstractContextManager["FeatureFile"]):
    """A featdump file opened for reading. Use as a context manager, or call :meth:`close`.

    Only committed rows (below ``meta["num_images"]``) are exposed, so a partial file reads the same
    way as a finished one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.missing = check_virtual(self.path)  # gone virtual sources (before our own handle: HDF5 allows one kind of open)
        self._h5, self._counts = open_checked(self.path)  # the layout and the counters, checked
        st = os.stat(self.path)  # what .torch() workers check they reopen (identity, size, time, counters)
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, replace(self._counts, cells={}))  # no tables to workers
        try:
            self.meta: dict[str, Any] = {k: read_attr(v) for k, v in self._h5.attrs.items()}
            n = self._counts.num_images
            self.paths: list[str] = [read_text(p) for p in self._h5["paths"][:n]] if n else []
        except BaseException:
            self._h5.close()
            raise
        self.num_images = len(self.paths)
        self.layers: list[str] = list(self._h5["features"].keys())
        self._rows = _index(self.paths)
        # ids (tar sample keys, a table's id column), row-aligned with paths; None when the inputs had none
        self.ids: list[str] | None = [read_text(v) for v in self._h5["ids"][:n]] if "ids" in self._h5 else None
        # values kept along (--keep, --keep-columns: /meta/<name>), row-aligned with paths; {} when none
        self.kept: dict[str, list[str]] = {k: [read_text(v) for v in ds[:n]] for k, ds in self._h5.get("meta", {}).items()}
        self._id_rows: dict[str, list[int]] | None = None
        self._spans: dict[str, Any] = {}  # virtual layers: where their sources' rows start (vds.source_spans)
        # ragged layers (docs/file-format.md): each row's cells, ``start, h, w`` (read and checked on open)
        self._cells: dict[str, np.ndarray] = self._counts.cells

    # ------------------------------------------------------------------ access

    def __getitem__(self, layer: str) -> h5py.Dataset:
        """The lazy h5py dataset of a layer (rows past ``num_images`` are not committed)."""
        if layer not in self.layers:
            raise KeyError(f"{layer!r} is not stored in {self.path}; layers: {', '.join(self.layers)}")
        return self._h5["features"][layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def __len__(self) -> int:
        return self.num_images

    def attrs(self, layer: str) -> dict[str, Any]:
        """A layer's attributes (module, index, channels, reduction, layout, …)."""
        return {k: read_attr(v) for k, v in self[layer].attrs.items()}

    def row(self, path: str) -> int:
        """The row of a stored image path (as in :attr:`paths`). A path stored in several rows
        (a table may list an image twice) is a ``ValueError`` naming them: choose from :attr:`paths`."""
        return _lookup(self._rows, path, "path", self.path, ".paths")

    def row_of_id(self, id: str) -> int:  # noqa: A002 - the documented name (docs/reading.md)
        """The row of a stored id (as in :attr:`ids`); an id in several rows is a ``ValueError``, as for :meth:`row`."""
        if self.ids is None:
            raise KeyError(f"{self.path} holds no ids (its inputs had none: tar shards or a table's --id-column give them)")
        if self._id_rows is None:
            self._id_rows = _index(self.ids)
        return _lookup(self._id_rows, str(id), "id", self.path, ".ids")

    def numpy(self, layer: str, rows: int | slice | Sequence[int] | None = None) -> Any:
        """Rows of a layer as a numpy array: all committed rows, one row (``int``: no leading axis),
        a slice, or a list of rows in any order (duplicates allowed). A merged file's rows are read
        from its sources a few at a time, each checked to be there (FeatdumpError naming one that is not).

        A ragged layer's row is ``(C, h_i, w_i)``; several rows are one array when their grids are
        equal, else a list of arrays."""
        ds = self[layer]
        if ds.is_virtual:
            self.check_sources()
        if layer not in self._cells:
            return self._take(ds, rows, layer)
        import numpy as np

        table = self._take(self._cells[layer], rows)
        if table.ndim == 1:
            return self._read_cells(layer, table[None])[0]
        maps = self._read_cells(layer, table)
        return np.stack(maps) if maps and len({m.shape for m in maps}) == 1 else maps

    def cells(self, layer: str) -> np.ndarray:
        """A ragged layer's ``(N, 3)`` int64 ``start, h, w`` per committed row (its cells are rows
        ``start .. start + h * w`` of ``self[layer]``, row-major over h, w); KeyError for a fixed layer."""
        if layer not in self._cells:
            self[layer]  # KeyError naming the stored layers
            raise KeyError(f"{layer!r} is a fixed layer of {self.path}, not a ragged one: it has no cells")
        return self._cells[layer].copy()

    def _read_cells(self, layer: str, table: np.ndarray) -> list[np.ndarray]:
        """The maps ``(C, h, w)`` of the rows ``table`` (start, h, w), read in one call when they lie close together."""
        import numpy as np

        ds, spans = self[layer], self._virtual_spans(layer)  # a merged file's sources: found once per layer
        if not len(table):
            return []
        ends = table[:, 0] + table[:, 1] * table[:, 2]
        lo, hi = int(table[:, 0].min()), int(ends.max())
        block = read_rows(ds, np.arange(lo, hi), spans, self.path) if hi - lo <= 2 * int((ends - table[:, 0]).sum()) else None
        return [
            (block[s - lo : e - lo] if block is not None else read_rows(ds, np.arange(s, e), spans, self.path)).T.reshape(-1, h, w)
            for (s, h, w), e in zip(table.tolist(), ends.tolist(), strict=True)
        ]

    def check_sources(self) -> None:
        """FeatdumpError when a merged file's source files went missing (their rows would read as NaN)."""
        if self.missing:
            raise FeatdumpError(
                f"{self.path}: virtual source file(s) missing ({', '.join(self.missing[:3])}); their rows would "
                "read as the fill value (NaN in files written by `featdump merge`); put them back first"
            )

    def _take(self, ds: Any, rows: int | slice | Sequence[int] | None, layer: str | None = None) -> np.ndarray:
        """Committed rows of a row-aligned dataset (a layer's: ``layer``): all, one (no leading axis), a slice, or a list."""
        import numpy as np

        n = self.num_images
        if isinstance(rows, (int, np.integer)):
            if not -n <= int(rows) < n:
                raise IndexError(f"row {int(rows)} out of range: {self.path} has {n} rows")
            return self._take(ds, [int(rows)], layer)[0]
        if rows is None or isinstance(rows, slice):
            rows = range(n)[rows or slice(None)]
        given = np.asarray(rows)
        if given.size and given.dtype.kind not in "iu":  # a boolean mask (or floats) would silently read rows 0 and 1
            raise TypeError(f"rows are whole numbers (a row, a slice or a list), not {given.dtype}; a mask: np.flatnonzero(mask)")
        idx = given.astype(np.int64).reshape(-1)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(f"rows {bad[:5].tolist()} out of range: {self.path} has {n} rows")
        if not idx.size:
            return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
        unique, where = np.unique(idx % n, return_inverse=True)
        block = read_rows(ds, unique, self._virtual_spans(layer) if layer is not None else None, self.path)
        return block if unique.size == idx.size and (unique == idx).all() else block[where]

    def _virtual_spans(self, layer: str) -> Any:
        """A virtual layer's :func:`~featdump.store.vds.source_spans`, found once; None for a stored one."""
        if layer not in self._spans and self[layer].is_virtual:
            self._spans[layer] = source_spans(self[layer], self.path)
        return self._spans.get(layer)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the images that could not be read."""
        m = self._counts.num_failed  # checked: /failed/paths and /failed/errors hold at least m rows
        return [(read_text(p), read_text(e)) for p, e in zip(self._h5["failed/paths"][:m], self._h5["failed/errors"][:m], strict=True)]

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    @property
    def h5(self) -> h5py.File:
        """The underlying open h5py.File (read-only)."""
        return self._h5

    def torch(
        self,
        layers: str | Sequence[str] | None = None,
        rows: Any = None,
        dtype: Any = None,
        resize: int | tuple[int, int] | None = None,
        pool: str | None = None,
        transform: Any = None,
    ) -> Any:
        """A ``torch.utils.data.Dataset`` over the committed rows (or ``rows``: indices, a slice, or a
        boolean mask), safe with ``DataLoader`` workers under fork and spawn (each process opens the
        file itself). Item ``i`` is a dict: one tensor per layer (key: its name), ``"path"``, ``"row"``
        (the file row), ``"id"`` when the file has ids and ``"tile"`` (its ``/tiles`` box) in a ``--tiles`` file.

        ``dtype`` converts (``torch.float32``, or its name); ``resize=(H, W)`` resizes every spatial
        layer bilinearly (align_corners=False); ``pool="avg"|"max"`` pools spatial dims (token layers:
        the patch tokens) to ``(C,)``; ``transform(item) -> item`` runs last.

        Example: ``DataLoader(featdump.open("f.h5").torch(["layer2"], pool="avg"), batch_size=64, num_workers=4)``
        """
        from featdump.store.torchdata import FeatureDataset

        return FeatureDataset(self, layers, rows, dtype=dtype, resize=resize, pool=pool, transform=transform)

    # ------------------------------------------------------------------ geometry (docs/dense.md)

    def geometry(self, rows: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """``/geometry`` rows: ``orig_h, orig_w, scale_y, scale_x, offset_y, offset_x`` (float64),
        original-image pixel = model-input pixel x scale + offset, pixel centres at +0.5
        (featdump/data/geometry.py). KeyError for files made before featdump stored it."""
        if "geometry" not in self._h5:
            raise KeyError(f"{self.path} holds no /geometry (made by a featdump that did not store it yet); extract again")
        return self._take(self._h5["geometry"], rows)

    def tiles(self, rows: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """``/tiles`` rows of a ``--tiles`` file: each row's tile ``y0, x0, y1, x1`` in original-image
        pixels (int64). KeyError for a file made without ``--tiles``."""
        if "tiles" not in self._h5:
            raise KeyError(f"{self.path} holds no /tiles: it was made without --tiles")
        return self._take(self._h5["tiles"], rows)

    def pixel_boxes(self, layer: str, row: int) -> np.ndarray:
        """``(H, W, 4)`` boxes ``y0, x0, y1, x1`` in original-image pixels of the cells of a spatial
        layer for one stored row (pixel ``i`` spans ``[i, i + 1)``; a cell wholly in padding is NaN:
        docs/dense.md); a ragged layer's ``(h_i, w_i, 4)`` at the row's own grid."""
        from featdump.data.geometry import cell_boxes

        attrs = self.attrs(layer)
        ds = self[layer]
        if layer not in self._cells and (str(attrs.get("layout", "NCHW")) != "NCHW" or len(ds.shape) != 4):
            raise ValueError(
                f"{layer!r} is not a spatial map (layout {attrs.get('layout')}, shape {ds.shape}); "
                "pixel boxes need an (N, C, H, W) or a ragged layer (--pool none, --tokens map|both for token layers)"
            )
        if attrs.get("pixel_grid") == []:
            raise ValueError(f"{layer!r}: a --process step made its cells something other than places in the image")
        geometry = self.geometry(row)
        if layer in self._cells:  # the row's own grid, on its own input (h_in, w_in) = original / scale
            grid = (int(self._cells[layer][row][1]), int(self._cells[layer][row][2]))
            in_h, in_w = round(geometry[0] / geometry[2]), round(geometry[1] / geometry[3])
        else:
            _, in_h, in_w = (int(v) for v in self.meta["input_size"])
            grid = (int(ds.shape[2]), int(ds.shape[3]))
        reduction = float(attrs.get("reduction", 0) or 0)
        return cell_boxes(geometry, grid, (in_h, in_w), reduction, attrs.get("pixel_grid"))

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        model = self.meta.get("model")
        return f"<featdump file {str(self.path)!r}: {model}, {self.num_images} images, {state}, layers {self.layers}>"


def open(path: str | Path) -> FeatureFile:  # noqa: A001 - featdump.open mirrors h5py.File / builtins.open
    """Open a featdump file for reading: ``.paths``, ``.layers``, ``.meta``, ``[layer]``, ``.row()``, ``.numpy()``."""
    return FeatureFile(path)


def _index(values: Sequence[str]) -> dict[str, list[int]]:
    """value -> the rows holding it, in order."""
    out: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        out.setdefault(v, []).append(i)
    return out


def _lookup(index: dict[str, list[int]], key: str, what: str, path: Any, attr: str) -> int:
    rows = index.get(key)
    if rows is None:
        raise KeyError(f"{key!r} is not a stored {what} in {path} (see {attr})")
    if len(rows) > 1:
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{key!r} is the {what} of {len(rows)} rows of {path} ({shown}); choose one from {attr}")
    return rows[0]
