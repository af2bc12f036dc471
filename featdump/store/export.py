"""``featdump export``: a file's vectors in the layouts the embedding ecosystem reads.

``npy`` (default): per layer, ``DIR/<layer>/emb/part-00000.npy`` (2-D, rows × C, rows in file order)
and ``DIR/<layer>/metadata/part-00000.parquet`` (columns ``row``, ``path``, and ``id`` when the file
has ids), parts of at most ``rows_per_part`` rows: what ``embedding-reader`` (``file_format="parquet_npy"``),
autofaiss and clip-retrieval read. Each part is streamed block by block to its file, so memory stays
bounded whatever the file size. A map layer (C×H×W, or tokens) needs ``pool``.

``safetensors``: ``DIR/features.safetensors``, one tensor per layer, for small files (up to
:data:`SAFETENSORS_LIMIT` bytes of tensors; larger exports are refused in favour of npy).

Nothing here prints; :func:`export_file` returns an :class:`ExportSummary`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featdump.errors import FeatdumpError, UsageError, is_out_of_space, out_of_space
from featdump.store.rowdata import ids_of, layout_of, pool_block
from featdump.store.vds import read_span

FORMATS = ("npy", "safetensors")
POOLS = ("avg", "max")
DTYPES = ("float16", "float32")
SAFETENSORS_LIMIT = 2 << 30  # 2 GiB of tensors
BLOCK_BYTES = 32 << 20  # stored bytes read per step


@dataclass
class ExportedLayer:
    name: str
    shape: list[int]  # per row, as exported
    dtype: str
    pooled_here: bool  # pooled by the export (else stored pooled, or exported whole)
    files: list[str] = field(default_factory=list)  # relative to the output folder


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


def _prepare_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} exists and is not a folder; export writes a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; export into a new or empty folder, or pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)


def _clear(paths: Sequence[Path]) -> None:
    """With --overwrite: the folders and file this export writes, so no stale part survives."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


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
    """Export the committed rows of ``path`` into the folder ``out`` (see the module doc).

    ``dtype``: float16 or float32 [the stored dtype]; ``pool``: avg or max, needed for map layers
    (npy); stored pooled layers are exported as they are.
    """
    from featdump.store.reader import FeatureFile

    if fmt not in FORMATS:
        raise UsageError(f"--format must be npy or safetensors, not {fmt!r}")
    if pool in (None, "none"):
        pool = None
    elif pool not in POOLS:
        raise UsageError(f"--pool must be avg or max, not {pool!r}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype must be float16 or float32, not {dtype!r}")
    if rows_per_part < 1:
        raise UsageError(f"--rows-per-part must be at least 1, not {rows_per_part}")
    out = Path(out)
    with FeatureFile(path) as ff:
        if ff._missing:
            raise FeatdumpError(
                f"{ff.path}: virtual source file(s) missing ({', '.join(ff._missing[:3])}); their rows would "
                "read as the fill value (NaN in files written by `featdump merge`); put them back first"
            )
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
            if layout != "NC" and pool is None and fmt == "npy":
                shown = "×".join(str(s) for s in stored)
                raise UsageError(
                    f"layer {name!r} is a map ({shown} per image); npy export writes vectors: add --pool avg|max"
                    + ("" if layers else ", or choose pooled layers with --layer")
                )
            pooled_here = layout != "NC" and pool is not None
            shape = [stored[-1] if layout == "NTD" else stored[0]] if pooled_here else list(stored)
            out_dtype = np.dtype(dtype or ("float16" if ds.dtype == np.float16 else "float32"))
            plans.append((name, layout, int(attrs.get("num_prefix_tokens", 0) or 0), pooled_here, shape, out_dtype))
        n = ff.num_images
        ids = ids_of(ff)
        total = sum(n * int(np.prod(s)) * d.itemsize for _, _, _, _, s, d in plans)
        if fmt == "safetensors" and total > safetensors_limit:
            raise UsageError(
                f"the export would hold {total / (1 << 30):.2f} GiB of tensors; --format safetensors is for "
                f"exports up to {safetensors_limit / (1 << 30):g} GiB: use --format npy (parts of --rows-per-part rows)"
            )
        _prepare_dir(out, overwrite)
        try:
            return _export(ff, plans, out, fmt, pool, rows_per_part, ids, n)
        except Exception as exc:  # safetensors' errors are not OSErrors: a full disk is text there
            if is_out_of_space(exc):
                raise out_of_space(out, then="run the export again") from None
            raise


def _export(
    ff: Any, plans: list[Any], out: Path, fmt: str, pool: str | None, rows_per_part: int, ids: Any, n: int
) -> ExportSummary:
    exported: list[ExportedLayer] = []
    written = 0
    if fmt == "safetensors":
        target = out / "features.safetensors"
        _clear([target])
        written = _write_safetensors(ff, plans, target, pool)
        for name, _layout, _prefix, pooled_here, shape, out_dtype in plans:
            exported.append(ExportedLayer(name, shape, str(out_dtype), pooled_here, [target.name]))
        parts = 1
    else:
        parts = -(-n // rows_per_part)
        for name, layout, prefix, pooled_here, shape, out_dtype in plans:
            _clear([out / name / "emb", out / name / "metadata"])
            files, nbytes = _write_npy_layer(
                ff, name, layout, prefix, pool if pooled_here else None, out_dtype, shape[0], out / name, rows_per_part, ids
            )
            written += nbytes
            exported.append(ExportedLayer(name, shape, str(out_dtype), pooled_here, [str(f.relative_to(out)) for f in files]))
    return ExportSummary(
        source=str(ff.path),
        output=str(out),
        format=fmt,
        rows=n,
        rows_per_part=rows_per_part,
        parts=parts,
        bytes=written,
        has_ids=ids is not None,
        layers=exported,
    )


def _blocks(ds: Any, start: int, stop: int) -> Any:
    """``(a, b)`` row ranges covering ``[start, stop)``, each about :data:`BLOCK_BYTES` of stored data
    and whole chunks where the dataset has row chunks of several rows."""
    row_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
    step = max(1, BLOCK_BYTES // row_bytes)
    chunk_rows = int(ds.chunks[0]) if ds.chunks else 1
    if chunk_rows > 1:
        step = max(chunk_rows, step - step % chunk_rows)
    for a in range(start, stop, step):
        yield a, min(stop, a + step)


def _vectors(ds: Any, a: int, b: int, layout: str, prefix: int, pool: str | None, dtype: np.dtype) -> np.ndarray:
    block = read_span(ds, a, b)  # a merged file's sources a few at a time, each checked
    if pool is not None:
        block = pool_block(block, layout, pool, prefix)
    return np.ascontiguousarray(block, dtype=dtype)


def _write_npy_layer(
    ff: Any, name: str, layout: str, prefix: int, pool: str | None, dtype: np.dtype, dim: int,
    folder: Path, rows_per_part: int, ids: list[str] | None,
) -> tuple[list[Path], int]:  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb, meta = folder / "emb", folder / "metadata"
    emb.mkdir(parents=True, exist_ok=True)
    meta.mkdir(parents=True, exist_ok=True)
    ds = ff[name]
    n = ff.num_images
    files: list[Path] = []
    nbytes = 0
    for part, start in enumerate(range(0, n, rows_per_part)):
        stop = min(n, start + rows_per_part)
        target = emb / f"part-{part:05d}.npy"
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as fh:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (stop - start, dim)}
            np.lib.format.write_array_header_1_0(fh, header)
            for a, b in _blocks(ds, start, stop):
                fh.write(_vectors(ds, a, b, layout, prefix, pool, dtype).tobytes())
        os.replace(tmp, target)
        columns: dict[str, Any] = {
            "row": pa.array(np.arange(start, stop, dtype=np.int64)),
            "path": pa.array(ff.paths[start:stop], type=pa.string()),
        }
        if ids is not None:
            columns["id"] = pa.array(ids[start:stop], type=pa.string())
        table_path = meta / f"part-{part:05d}.parquet"
        pq.write_table(pa.table(columns), table_path)
        files += [target, table_path]
        nbytes += target.stat().st_size + table_path.stat().st_size
    return files, nbytes


def _write_safetensors(ff: Any, plans: list[Any], target: Path, pool: str | None) -> int:
    from safetensors.numpy import save_file

    n = ff.num_images
    tensors = {}
    for name, layout, prefix, pooled_here, shape, dtype in plans:
        ds = ff[name]
        arr = np.empty((n, *shape), dtype=dtype)
        for a, b in _blocks(ds, 0, n):
            arr[a:b] = _vectors(ds, a, b, layout, prefix, pool if pooled_here else None, dtype)
        tensors[name] = arr
    meta = {
        "format": "featdump-export",
        "source": str(ff.path),
        "model": str(ff.meta.get("model", "")),
        "rows": str(n),
        "pool": pool or "none",
        "layers": json.dumps([p[0] for p in plans]),
    }
    tmp = target.with_name(f".{target.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates it 0600; give it the mode open() would
    os.replace(tmp, target)
    return target.stat().st_size


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells (/proc), else 0o022."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
