"""The HDF5 layout of docs/file-format.md: create, append, commit, resume, finish.

Crash consistency (featdump/store/journal-design.md): HDF5 writes through a redo journal, so rows
and the counters that vouch for them (``num_images``, ``num_failed``, ``inputs_done``) become the
file's state together, at a commit. The file uses HDF5's oldest format (superblock v0), which a
killed process leaves openable; newer superblocks leave a "file is already open for write" flag
that h5py cannot clear.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featdump import __version__
from featdump.data.geometry import COLUMNS as GEOMETRY_COLUMNS
from featdump.environment import COMMIT_SECONDS
from featdump.errors import FeatdumpError, UsageError, is_out_of_space, os_error, out_of_space
from featdump.model.layers import LayerInfo, is_ragged
from featdump.store.check import check_file, check_same_settings
from featdump.store.chunks import ChunkWriter
from featdump.store.format import CELLS, FEATURES, RAGGED_VERSION, chunk_shape, compression_kwargs, extent, set_attr
from featdump.text import clip, first_line

if TYPE_CHECKING:
    from featdump.data.batching import Rows


class NothingCommitted(FeatdumpError):
    """``--resume`` found a file killed before its first commit (now removed): start it afresh."""


@dataclass
class Progress:
    """Committed counts of a file (rows below ``num_images`` are trusted)."""

    num_images: int = 0
    num_failed: int = 0
    inputs_done: int = 0


class Store:
    """An open featdump file being written through its journal. Not thread-safe: one writer thread
    owns it. Commits happen at most every ``commit_seconds`` and always at finish and close."""

    def __init__(self, h5: Any, layers: Sequence[LayerInfo], progress: Progress, jf: Any, path: str | Path) -> None:
        self.h5 = h5
        self.layers = list(layers)
        self.progress = progress  # what the file holds, written or not yet committed
        self.bytes_written = 0
        self.jf = jf
        self.path = Path(path)
        self.complete = bool(h5.attrs.get("complete", False))
        self.broken = False
        self.unfinished = False  # rows of an image whose last tiles are still to come (Rows.whole)
        self.readonly = False  # a complete file reopened by --resume: nothing to write
        self.commit_seconds = COMMIT_SECONDS.value()
        # streams (tar shards): where --resume continues, committed with inputs_done (data/sources.py)
        self.mark = [int(v) for v in h5.attrs["stream_mark"]] if "stream_mark" in h5.attrs else None
        self.ids = "ids" in h5  # the inputs provide ids: /ids and /failed/ids
        self.meta = list(h5["meta"]) if "meta" in h5 else []  # --keep, --keep-columns
        self._last_commit = time.monotonic()
        # Feature rows go out as whole chunks (featdump/store/chunks.py)
        self.write_threads = 1  # threads preparing (compressing) chunks; set by run/writer.py
        self._chunks: ChunkWriter | None = None

    # ---------------------------------------------------------------- open

    @classmethod
    def create(
        cls,
        path: str | Path,
        attrs: dict[str, Any],
        layers: Sequence[LayerInfo],
        *,
        pool: str,
        dtype: str,
        compression: str,
    ) -> Store:
        import h5py

        from featdump.store.journal import JournaledFile

        jf = JournaledFile.create(path)
        try:
            h5 = h5py.File(jf, "w", libver="earliest", track_order=True)
        except OSError as exc:
            jf.abandon(remove=True)
            raise FeatdumpError(f"cannot open {path}: {first_line(exc, repr(exc))}") from None  # HDF5 locks no file object
        with _failing(path, jf, lambda: _abandon(h5, jf, remove=True)):
            for key, value in attrs.items():
                set_attr(h5, key, value)
            h5.attrs["complete"] = False
            for key in ("num_images", "num_failed", "inputs_done"):
                h5.attrs[key] = 0
            ids = ["ids", "failed/ids"] if attrs.get("has_ids") else []
            kept = [f"meta/{name}" for name in attrs.get("keep") or attrs.get("keep_columns") or ()]  # row-aligned
            for name in ["paths", "failed/paths", "failed/errors", *ids, *kept]:
                chunk = 256 if name.startswith("failed/") else 4096
                h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(chunk,))
            columns = len(GEOMETRY_COLUMNS)  # /geometry (N, 6) float64 in 12 KiB chunks: featdump/data/geometry.py
            geometry = h5.create_dataset(GEOMETRY, shape=(0, columns), maxshape=(None, columns), dtype="float64", chunks=(256, columns))
            geometry.attrs["columns"] = list(GEOMETRY_COLUMNS)
            if attrs.get("tiles"):  # /tiles (N, 4) int64: each row's tile box (featdump/data/tiles.py)
                h5.create_dataset("tiles", shape=(0, 4), maxshape=(None, 4), dtype="int64", chunks=(1024, 4))
            group = h5.create_group(FEATURES, track_order=True)
            filters = compression_kwargs(compression, dtype)
            itemsize = 4 if dtype == "float32" else 2
            for layer in layers:
                ragged = is_ragged(layer, pool)
                shape = layer.row_shape(pool)
                if ragged:
                    h5.attrs["format_version"] = RAGGED_VERSION
                    h5.create_dataset(f"{CELLS}/{layer.name}", shape=(0, 3), maxshape=(None, 3), dtype="int64", chunks=(4096, 3))
                ds = group.create_dataset(
                    layer.name,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=chunk_shape(shape, itemsize),
                    **filters,
                )
                for key in ("module", "index", "channels", "reduction"):
                    ds.attrs[key] = getattr(layer, key)
                ds.attrs["layout"] = "ragged" if ragged else "NC" if pool != "none" else ("NTD" if layer.layout == "NLC" else "NCHW")
                ds.attrs["pool"] = pool
                for key, value in layer.attrs.items():  # a layer's own win (fc: layout NC), not the size mode's mark
                    if (key, value) != ("layout", "ragged"):
                        set_attr(ds, key, value)
            h5.flush()
            jf.commit()  # the first commit: from now on the file is a valid (empty) featdump file
        return cls(h5, layers, Progress(), jf, path)

    @classmethod
    def resume(cls, path: str | Path, attrs: dict[str, Any], layers: Sequence[LayerInfo]) -> Store:
        """Reopen an unfinished file after checking its settings (read without changing a byte, so a
        refused resume leaves the file byte-identical); a complete file is opened read-only."""
        import h5py

        from featdump.store.journal import JournaledFile

        jf = JournaledFile.open(path)
        if jf.view().size == 0:  # killed before its first commit: there is nothing to continue
            jf.abandon(remove=True)
            raise NothingCommitted(f"{path} holds no committed data yet")
        try:
            with h5py.File(jf.view(), "r") as h5:
                check_same_settings(h5, attrs, path)
                counts = check_file(h5, path)  # counters that the datasets do not back: refused
                names = list(h5[FEATURES].keys())
                if names != [layer.name for layer in layers]:
                    raise UsageError(
                        f"--resume: {path} holds layers {names}, this run would write {[l.name for l in layers]}; "
                        "use the same settings, or --overwrite to start again"
                    )
                complete = bool(h5.attrs.get("complete", False))
        except OSError as exc:
            jf.release()
            raise FeatdumpError(
                f"--resume: {path} cannot be read as HDF5 ({first_line(exc)}); start again with --overwrite"
            ) from None
        except BaseException:
            jf.release()
            raise
        try:
            jf.recover()  # replay or cut what the last run left past its last commit
            h5 = h5py.File(jf.view() if complete else jf, "r" if complete else "r+")
        except BaseException:
            jf.release()
            raise
        with _failing(path, jf, lambda: _abandon(h5, jf)):
            progress = Progress(counts.num_images, counts.num_failed, counts.inputs_done)
            store = cls(h5, layers, progress, jf, path)
            store.readonly = complete
            if not complete:
                store._truncate()
                h5.attrs["featdump_version"] = __version__
                h5.flush()
                jf.commit()
        return store

    def _truncate(self) -> None:
        """Every row dataset cut back to the last commit (a ragged layer's features: to its cells)."""
        n, m = self.progress.num_images, self.progress.num_failed
        sizes = {f"{FEATURES}/{name}": extent(self.h5, name, n) for name in self.h5[FEATURES]}
        sizes |= dict.fromkeys(("paths", "ids", GEOMETRY, "tiles", *(f"{CELLS}/{name}" for name in self.h5.get(CELLS, {}))), n)
        sizes |= dict.fromkeys((f"meta/{name}" for name in self.meta), n)
        sizes |= dict.fromkeys(("failed/paths", "failed/errors", "failed/ids"), m)
        for key, size in sizes.items():
            if key in self.h5 and self.h5[key].shape[0] != size:
                self.h5[key].resize(size, axis=0)

    # ---------------------------------------------------------------- write

    def append(self, rows: Rows) -> None:
        """Write one batch (rows in list order, failures after the failed ones); commit when
        ``commit_seconds`` have passed. Ids are written when the file has ``/ids``; ``rows.mark``
        (where a stream continues) is committed together with ``rows.inputs_done``."""
        import numpy as np

        with _failing(self.path, self.jf, self._break):
            n, m = self.progress.num_images, self.progress.num_failed
            b, failed = len(rows.paths), rows.failed
            if b:
                if self._chunks is None:  # made on the first rows: write_threads is set by then
                    datasets = [self.h5[FEATURES][layer.name] for layer in self.layers]
                    self._chunks = ChunkWriter(datasets, self.write_threads)
                batch = []
                columns: list[tuple[Any, Any]] = [(self.h5["paths"], list(rows.paths))]
                for layer, arr in zip(self.layers, rows.features, strict=True):
                    ds = self.h5[FEATURES][layer.name]
                    start = n
                    if isinstance(arr, list):  # ragged: B maps (C, h_i, w_i) -> their cells, row after row
                        start = ds.shape[0]
                        sizes = np.array([a.shape[1:] for a in arr], dtype=np.int64).reshape(b, 2)
                        starts = start + np.concatenate([[0], np.cumsum(sizes.prod(axis=1))[:-1]])
                        columns.append((self.h5[CELLS][layer.name], np.column_stack([starts, sizes])))
                        arr = np.concatenate([a.reshape(a.shape[0], -1).T for a in arr])
                    ds.resize(start + len(arr), axis=0)
                    batch.append((ds, arr, start))
                    self.bytes_written += arr.nbytes
                self._chunks.write(batch)
                if self.ids:
                    columns.append((self.h5["ids"], [i or "" for i in rows.ids or [None] * b]))
                geometry, given = self.h5[GEOMETRY], rows.geometry is not None and len(rows.geometry) == b
                columns.append((geometry, rows.geometry if given else np.full((b, geometry.shape[1]), np.nan)))  # NaN: none given
                if "tiles" in self.h5:
                    columns.append((self.h5["tiles"], rows.tiles))
                for name in self.meta:  # --keep, --keep-columns: "" where a row lacks one
                    columns.append((self.h5["meta"][name], [(m or {}).get(name, "") for m in rows.meta or [None] * b]))
                _extend(columns, n)
            if failed:
                columns = [(self.h5["failed/paths"], [f.path for f in failed]), (self.h5["failed/errors"], [clip(f.reason) for f in failed])]
                if self.ids:
                    columns.append((self.h5["failed/ids"], [f.id or "" for f in failed]))
                _extend(columns, m)
            if self.jf.failed:  # an I/O error inside HDF5's writes
                raise self.jf.error or OSError("write failed")
            self.progress = Progress(n + b, m + len(failed), rows.inputs_done)
            self.unfinished = not rows.whole  # an image's tiles go on in the next batch: no commit before its last
            if rows.mark is not None:
                self.mark = [int(v) for v in rows.mark]
            if time.monotonic() - self._last_commit >= self.commit_seconds:
                self.commit()

    def commit(self) -> None:
        """Counters, HDF5 flush and journal commit: rows and counters become durable together."""
        if self.broken or self.readonly or self.unfinished:
            return
        with _failing(self.path, self.jf, self._break):
            if self._chunks is not None:
                self._chunks.flush()  # rows of unfilled chunks: into the file before the counters vouch for them
            for key, value in vars(self.progress).items():
                self.h5.attrs[key] = value
            if self.mark is not None:
                self.h5.attrs["stream_mark"] = self.mark
            if self.complete:
                self.h5.attrs["complete"] = True
            self.h5.flush()
            self.jf.commit()
        self._last_commit = time.monotonic()

    def _break(self) -> None:
        self.broken = True  # a failed write: nothing more is committed

    def finish(self) -> None:
        self.complete = True
        self.commit()

    def close(self) -> None:
        """Commit what was written (unless a write failed), close, and drop the journal and the lock."""
        if self._chunks is not None:
            self._chunks.close()  # the pool only prepares chunks; what is left to write, commit() writes
        if self.jf.fd < 0:
            return
        if self.readonly:
            _close_quietly(self.h5)
            self.jf.close()  # recovered and complete: the journal has nothing left to say
            return
        if self.broken or self.unfinished:  # an image's rows cut short: the file keeps its last commit
            _abandon(self.h5, self.jf)
            return
        with _failing(self.path, self.jf, lambda: _abandon(self.h5, self.jf)):
            self.commit()
            self.h5.close()  # HDF5 may write a last time; the journal holds it until the commit below
            self.jf.commit()
        self.jf.close()


GEOMETRY = "geometry"  # /geometry: featdump/data/geometry.py (docs/file-format.md)


def _extend(columns: list[tuple[Any, Any]], n: int) -> None:
    """Each ``(dataset, values)``: the values appended as rows ``n ..``."""
    for ds, values in columns:
        ds.resize(n + len(values), axis=0)
        ds[n:] = values


def _close_quietly(h5: Any) -> None:
    try:
        if h5.id.valid:
            h5.close()
    except Exception:  # noqa: BLE001 - already failing; the journal keeps the last commit
        pass


def _abandon(h5: Any, jf: Any, remove: bool = False) -> None:
    _close_quietly(h5)
    jf.abandon(remove=remove)


@contextmanager
def _failing(path: str | Path, jf: Any, undo: Callable[[], None]) -> Iterator[None]:
    """``undo()`` on any failure; an OSError becomes one actionable line (:func:`_io_error`)."""
    try:
        yield
    except BaseException as exc:
        undo()
        if isinstance(exc, OSError):
            raise _io_error(path, jf, exc) from None
        raise


def _io_error(path: str | Path, jf: Any, exc: BaseException) -> FeatdumpError:
    """An HDF5/OS write failure -> one actionable line; the errno the journal saw names the cause."""
    cause = getattr(jf, "error", None) or (exc if isinstance(exc, OSError) and exc.errno else None)
    if cause is not None:
        return os_error(cause, path, "write", hint="fix that, then rerun with --resume")
    if is_out_of_space(exc):
        return out_of_space(path)
    return FeatdumpError(f"cannot write {path}: {first_line(exc)}; rerun with --resume to continue")
