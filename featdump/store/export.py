"""``featdump export``: a file's vectors in the layouts the embedding ecosystem and cloud readers read.

The layouts are the contract of docs/reading.md; how a kill or failed upload leaves OUT, that of
docs/object-storage.md. npy parts are streamed block by block (bounded memory); safetensors holds the
tensors twice in memory, hence :data:`SAFETENSORS_LIMIT`. :data:`MANIFEST` is written first with
``"complete": false`` and the top-level names the export writes (``entries``), so a rerun may replace
an unfinished export, and last with ``"complete": true``. Only names listed in OUT itself are
deleted, and a symlink is removed, never followed.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from featdump.errors import FeatdumpError, UsageError, is_out_of_space, os_error
from featdump.store.reader import FeatureFile
from featdump.store.rowdata import POOLS, layout_of, pool_block, pool_cells, row_blocks, skipped_tokens
from featdump.store.vds import read_span

FORMATS = ("npy", "safetensors", "zarr")
DTYPES = ("float16", "float32")
SAFETENSORS_LIMIT = 2 << 30  # 2 GiB of tensors
CHUNK_BYTES = 4 << 20  # zarr: bytes per chunk (at most), before compression
MANIFEST = "featdump-export.json"
NPY_PART = (("emb", "npy"), ("metadata", "parquet"))  # each part of a layer: its vectors, its rows' metadata
RERUN = "run the same export command again (it replaces the unfinished export)"


@dataclass
class ExportedLayer:
    name: str
    shape: list[int]  # per row, as exported
    dtype: str
    pooled_here: bool  # pooled by the export (else stored pooled, or exported whole)
    files: list[str] = field(default_factory=list)  # relative to the output folder


@dataclass
class _Plan:
    """One layer to export: how it is stored, and what the export makes of it."""

    name: str
    layout: str
    prefix: int  # class/register tokens, left out when token rows are pooled
    pool: str | None  # set where the export pools the layer
    shape: list[int]  # per row, as exported
    dtype: np.dtype
    cells: Any = None  # a ragged layer's start, h, w per row (FeatureFile.cells, read once on open)


@dataclass
class ExportSummary:
    source: str
    output: str
    format: str
    rows: int
    rows_per_part: int
    parts: int
    bytes: int
    has_ids: bool
    layers: list[ExportedLayer]


class Folder:
    """Where an export writes: a local folder (a path or ``file://``) or a prefix in an object store."""

    def __init__(self, out: str | Path) -> None:
        from fsspec.implementations.local import LocalFileSystem

        from featdump.data.remote import filesystem, is_url

        self.shown = str(out)
        self.fs: Any
        self.fs, root = filesystem(self.shown) if is_url(self.shown) else (None, self.shown)
        self.local = self.fs is None or isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.local else root.rstrip("/")

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if self.local else f"{self.root}/{rel}"

    def names(self) -> list[str]:
        """The names in the folder itself (none when it does not exist)."""
        if self.local:
            if os.path.lexists(self.root) and not os.path.isdir(self.root):
                raise UsageError(f"-o {self.shown} exists and is not a folder; export writes a folder")
            return os.listdir(self.root) if os.path.isdir(self.root) else []
        if self.fs.isfile(self.root):
            raise UsageError(f"-o {self.shown} is an object, not a folder; export writes a folder")
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False, refresh=True)]
        except FileNotFoundError:
            return []

    def manifest(self) -> dict[str, Any] | None:
        """The export's manifest, or None where there is none (or it is not one of featdump's)."""
        try:
            found = json.loads(Path(self.path(MANIFEST)).read_text() if self.local else self.fs.cat_file(self.path(MANIFEST)))
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) and found.get("featdump_export") == 1 else None

    def remove(self, name: str) -> None:
        """Delete ``name`` in the folder: a symlink itself (never what it points to), a file, a tree."""
        target = self.path(name)
        if not self.local:
            self.fs.rm(target, recursive=True)
        elif os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)  # unlinks the symlinks inside it, follows none
        else:
            os.unlink(target)

    @contextmanager
    def writing(self, rel: str) -> Iterator[IO[bytes]]:
        """A file to write ``rel`` into; it appears whole when the block ends, and not at all on an error."""
        if not self.local:
            fh = self.fs.open(self.path(rel), "wb")
            try:
                yield fh
            except BaseException:
                fh.discard()  # an unfinished upload is aborted, never completed by close()
                raise
            fh.close()
            return
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            with open(tmp, "xb") as fh:  # exclusive: a planted symlink at the temporary name is not followed
                yield fh
            os.replace(tmp, target)
        except BaseException:
            with suppress(OSError):
                tmp.unlink()
            raise

    def write_manifest(self, content: dict[str, Any]) -> None:
        with self.writing(MANIFEST) as fh:
            fh.write((json.dumps({"featdump_export": 1, **content}, indent=2) + "\n").encode())


def read_export(out: str | Path) -> dict[str, Any]:
    """The manifest of the export at ``out`` (a folder or URL); FeatdumpError unless it is complete."""
    found = Folder(out).manifest()
    if found is None:
        raise FeatdumpError(f"{out} holds no featdump export ({MANIFEST} is missing)")
    if found.get("complete") is not True:
        raise FeatdumpError(f"{out} holds an unfinished export (stopped or failed): {RERUN}")
    return found


def _prepare(folder: Folder, entries: list[str], overwrite: bool) -> None:
    """Refuse a folder that holds other things (unless ``overwrite``); delete an unfinished export,
    or with ``overwrite`` an earlier one and whatever this export writes."""
    names = folder.names()
    old = folder.manifest()
    if names and not overwrite and (old is None or old.get("complete") is True):
        what = "holds a finished export" if old else "is not empty"
        raise UsageError(f"{folder.shown} {what}; export into a new or empty folder, or pass --overwrite to replace it")
    listed = old.get("entries", []) if old else []
    doomed = set(entries) | {str(e) for e in listed if isinstance(e, str)}
    for name in names:  # names listed in the folder itself: never a path outside it
        if name in doomed:
            folder.remove(name)


def export_file(
    path: str | Path,
    out: str | Path,
    layers: Sequence[str] | None = None,
    pool: str | None = None,
    dtype: str | None = None,
    rows_per_part: int = 100_000,
    fmt: str = "npy",
    overwrite: bool = False,
    safetensors_limit: int = SAFETENSORS_LIMIT,
) -> ExportSummary:
    """Export the committed rows of ``path`` into ``out``, a folder or URL. ``pool`` (avg or max)
    is needed for map layers (npy); stored pooled layers are exported as they are."""
    pool = None if pool == "none" else pool
    for flag, value, choices in (("--format", fmt, FORMATS), ("--pool", pool, (None, *POOLS)), ("--dtype", dtype, (None, *DTYPES))):
        if value not in choices:
            listed = [c for c in choices if c]
            raise UsageError(f"{flag} must be {', '.join(listed[:-1])} or {listed[-1]}, not {value!r}")
    if rows_per_part < 1:
        raise UsageError(f"--rows-per-part must be at least 1, not {rows_per_part}")
    if fmt == "zarr":
        try:
            import zarr  # noqa: F401
        except ImportError:
            raise UsageError("--format zarr needs the zarr package: pip install 'featdump[zarr]'") from None
    folder = Folder(out)
    with FeatureFile(path) as ff:
        ff.check_sources()
        names = list(dict.fromkeys(layers)) if layers else list(ff.layers)
        unknown = [n for n in names if n not in ff.layers]
        if unknown:
            raise UsageError(f"no layer {unknown[0]!r} in {ff.path}; layers: {', '.join(ff.layers)}")
        plans = []
        for name in names:
            ds = ff[name]
            attrs = ff.attrs(name)
            layout = layout_of(attrs, ds.ndim)
            stored = tuple(int(s) for s in ds.shape[1:])
            if layout == "ragged" and pool is None:
                raise UsageError(
                    f"layer {name!r} is ragged (each image at its own h×w); an export holds one shape per layer: add --pool avg|max"
                )
            if layout != "NC" and pool is None and fmt == "npy":
                shown = "×".join(str(s) for s in stored)
                raise UsageError(
                    f"layer {name!r} is a map ({shown} per image); npy export writes vectors: add --pool avg|max"
                    + ("" if layers else ", or choose pooled layers with --layer")
                )
            pooled_here = layout != "NC" and pool is not None
            shape = [stored[-1] if layout == "NTD" else stored[0]] if pooled_here else list(stored)
            out_dtype = np.dtype(dtype or ("float16" if ds.dtype == np.float16 else "float32"))
            prefix = skipped_tokens(attrs)
            cells = ff.cells(name) if layout == "ragged" else None
            plans.append(_Plan(name, layout, prefix, pool if pooled_here else None, shape, out_dtype, cells))
        n = ff.num_images
        total = sum(n * int(np.prod(p.shape)) * p.dtype.itemsize for p in plans)
        if fmt == "safetensors" and total > safetensors_limit:
            raise UsageError(
                f"the export would hold {total / (1 << 30):.2f} GiB of tensors; --format safetensors is for "
                f"exports up to {safetensors_limit / (1 << 30):g} GiB: use --format npy (parts of --rows-per-part rows)"
            )
        own = {"npy": [], "safetensors": [], "zarr": ["zarr.json", "paths", "ids", "tiles"]}[fmt]
        if clash := [n for n in names if n in (*own, MANIFEST)]:  # a layer renamed so (HDF5 allows it)
            raise UsageError(
                f"layer {clash[0]!r} has the name of a file --format {fmt} writes itself; export the other layers with --layer"
            )
        entries = {"npy": names, "safetensors": ["features.safetensors"], "zarr": [*own, *names]}[fmt]
        st = ff.path.stat()  # the source's identity, in the manifest
        source = {"path": str(ff.path.absolute()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "created": ff.meta.get("created"), "num_images": n}
        parts = -(-n // rows_per_part) if fmt == "npy" else 1
        try:
            _prepare(folder, entries, overwrite)
            folder.write_manifest({"complete": False, "entries": entries, "source": source})
            write = {"npy": _write_npy, "safetensors": _write_safetensors, "zarr": _write_zarr}[fmt]
            written = write(ff, plans, folder, pool, rows_per_part)
            exported = [ExportedLayer(p.name, p.shape, str(p.dtype), p.pool is not None, _files(fmt, p.name, parts)) for p in plans]
            summary = ExportSummary(str(ff.path), folder.shown, fmt, n, rows_per_part, parts, written, ff.ids is not None, exported)
            folder.write_manifest({"complete": True, "entries": entries, **asdict(summary), "source": source})
        except (OSError, RuntimeError, ValueError) as exc:  # safetensors' and zarr's errors carry ENOSPC as text
            if isinstance(exc, OSError) or is_out_of_space(exc):
                raise os_error(exc, folder.shown, then=RERUN) from None
            raise
        return summary


def _files(fmt: str, name: str, parts: int) -> list[str]:
    """A layer's files in the output folder."""
    if fmt == "npy":
        return [f"{name}/{kind}/part-{i:05d}.{ext}" for i in range(parts) for kind, ext in NPY_PART]
    return ["features.safetensors"] if fmt == "safetensors" else [name]


def _vectors(ds: Any, a: int, b: int, plan: _Plan) -> np.ndarray:
    if plan.layout == "ragged" and plan.pool is not None:  # rows a..b: their cells, pooled row by row
        table = plan.cells[a:b]
        sizes = table[:, 1] * table[:, 2]
        block = read_span(ds, int(table[0, 0]), int(table[0, 0] + sizes.sum()))
        return np.ascontiguousarray(pool_cells(block, sizes, plan.pool), dtype=plan.dtype)
    block = read_span(ds, a, b)  # a merged file's sources a few at a time, each checked
    if plan.pool is not None:
        block = pool_block(block, plan.layout, plan.pool, plan.prefix)
    return np.ascontiguousarray(block, dtype=plan.dtype)


def _write_npy(ff: Any, plans: list[_Plan], folder: Folder, _pool: str | None, rows_per_part: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = ff.num_images
    nbytes = 0
    for plan in plans:
        ds = ff[plan.name]
        files = _files("npy", plan.name, -(-n // rows_per_part))
        for part, start in enumerate(range(0, n, rows_per_part)):
            stop = min(n, start + rows_per_part)
            emb, meta = files[2 * part : 2 * part + 2]
            with folder.writing(emb) as fh:
                descr = np.lib.format.dtype_to_descr(plan.dtype)
                header = {"descr": descr, "fortran_order": False, "shape": (stop - start, plan.shape[0])}
                np.lib.format.write_array_header_1_0(fh, header)
                for a, b in row_blocks(ds, start, stop, plan.cells):
                    fh.write(_vectors(ds, a, b, plan).tobytes())
                nbytes += fh.tell()
            columns: dict[str, Any] = {
                "row": pa.array(np.arange(start, stop, dtype=np.int64)),
                "path": pa.array(ff.paths[start:stop], type=pa.string()),
            }
            if ff.ids is not None:
                columns["id"] = pa.array(ff.ids[start:stop], type=pa.string())
            if len(ff.meta.get("tiles", "")):  # --tiles: each row's box in its image
                columns.update(zip(("y0", "x0", "y1", "x1"), ff.tiles(slice(start, stop)).T, strict=True))
            for key, values in ff.kept.items():  # --keep, --keep-columns
                while key in columns:  # row, path, id, y0, ... or a kept meta.row before it: meta.<name>
                    key = f"meta.{key}"
                columns[key] = pa.array(values[start:stop], type=pa.string())
            with folder.writing(meta) as fh:
                pq.write_table(pa.table(columns), fh)
                nbytes += fh.tell()
    return nbytes


def _write_safetensors(ff: Any, plans: list[_Plan], folder: Folder, pool: str | None, _rows: int) -> int:
    from safetensors.numpy import save

    n = ff.num_images
    tensors = {}
    for plan in plans:
        ds = ff[plan.name]
        tensors[plan.name] = arr = np.empty((n, *plan.shape), dtype=plan.dtype)
        for a, b in row_blocks(ds, 0, n, plan.cells):
            arr[a:b] = _vectors(ds, a, b, plan)
    meta = {
        "format": "featdump-export",
        "source": str(ff.path),
        "model": str(ff.meta.get("model", "")),
        "rows": str(n),
        "pool": pool or "none",
        "layers": json.dumps([p.name for p in plans]),
    }
    data = save(tensors, metadata=meta)
    with folder.writing("features.safetensors") as fh:
        fh.write(data)
    return len(data)


def _write_zarr(ff: Any, plans: list[_Plan], folder: Folder, _pool: str | None, rows: int) -> int:
    import zarr
    from zarr.codecs import ZstdCodec

    n = ff.num_images
    group = zarr.open_group(folder.root if folder.local else folder.shown, mode="a", zarr_format=3)
    group.attrs.update({k: v for k, v in ff.meta.items() if isinstance(v, (str, int, float, bool, list))})
    arrays = []
    for plan in plans:
        ds = ff[plan.name]
        per_row = max(1, int(np.prod(plan.shape)) * plan.dtype.itemsize)
        chunk = max(1, min(rows, CHUNK_BYTES // per_row, n))
        axes = "NC" if plan.pool else plan.layout
        arr = group.create_array(
            plan.name, shape=(n, *plan.shape), chunks=(chunk, *plan.shape), dtype=plan.dtype, compressors=ZstdCodec(level=3),
            dimension_names=["row", *(f"{plan.name}.{a.lower()}" for a in axes[1:])],
        )  # fmt: skip
        arrays.append(arr)
        for a, b in row_blocks(ds, 0, n, plan.cells, chunk):
            arr[a:b] = _vectors(ds, a, b, plan)
    for name, values in (("paths", ff.paths), ("ids", ff.ids)):
        if values is not None:
            text = group.create_array(name, shape=(n,), chunks=(max(1, min(rows, n)),), dtype=str, dimension_names=["row"])
            text[:] = np.array(values, dtype=object)
            arrays.append(text)
    if len(ff.meta.get("tiles", "")):  # --tiles: each row's box y0, x0, y1, x1 in its image
        arrays.append(group.create_array("tiles", data=ff.tiles(), chunks=(max(1, min(rows, n)), 4), dimension_names=["row", "box"]))
    with warnings.catch_warnings():  # "consolidated metadata is not in the v3 spec yet": xarray reads it
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(group.store)
    return sum(int(a.nbytes_stored()) for a in arrays)
