"""Is an open featdump file what it says it is? Layout and counters, checked before anything trusts them.

Every reader, ``merge`` and ``--resume`` calls :func:`check_file` right after opening a file: what
does not hold up is one UsageError naming the file and what disagrees, never a traceback or rows of
zeros read as data. Only metadata is read: nothing here follows an external link or reads a virtual
dataset (their sources are checked by :mod:`featdump.store.vds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump import FORMAT_VERSION, __version__
from featdump.errors import UsageError
from featdump.options import SETTINGS
from featdump.store.format import CELLS, FEATURES, RAGGED_VERSION, first_difference, read_attr, read_text
from featdump.text import printable, to_str, unsafe_name

# Which inputs a file covers: its block (input_digest, num_inputs), the whole list it was cut from
# (list_digest, list_size) and the cut (shard [I, N]). --resume compares them; merge checks them shard by shard.
INPUT_KEYS = ("input_digest", "num_inputs", "list_digest", "list_size", "shard")

# Settings that must match for --resume to continue a file (and for merge to join shards): the
# attributes of the meaning options in the option table (featdump/options.py), the normalisation the
# model brings with it, and the inputs.
RESUME_KEYS = (*SETTINGS, "mean", "std", *INPUT_KEYS)


# Datasets that, when present, hold one row per image (row i belongs to /paths[i]).
ROW_DATASETS = ("paths", "ids", "geometry", "tiles")


@dataclass(frozen=True)
class Counts:
    """A file's committed counters, checked against its datasets."""

    num_images: int
    num_failed: int
    inputs_done: int
    num_inputs: int | None  # None: not recorded
    shard: tuple[int, int] | None  # (I, N); None: not recorded
    cells: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # ragged layers' checked /cells rows


def invalid(path: str | Path, what: str) -> UsageError:
    """``PATH is not a valid featdump file: WHAT`` (structure: links, groups, missing datasets)."""
    return UsageError(f"{path} is not a valid featdump file: {what}")


def inconsistent(path: str | Path, what: str) -> UsageError:
    """``PATH is inconsistent: WHAT`` (counters that disagree with the datasets)."""
    return UsageError(f"{path} is inconsistent: {what} (edited or damaged?); none of its rows can be trusted")


def _hard(group: Any, name: str, where: str, path: str | Path, noun: str, required: bool = True) -> Any:
    """The ``noun`` ("dataset" or "group") the link ``name`` of ``group`` points at, None when there is
    none and it is not ``required``; a soft or an external link (checked without following it) is refused."""
    import h5py

    if name not in group.keys():  # noqa: SIM118 - keys() lists link names; `in group` follows the link
        if required:
            raise invalid(path, f"it has no {where} {noun}")
        return None
    link = group.get(name, getlink=True)
    if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
        kind = "a soft" if isinstance(link, h5py.SoftLink) else "an external"
        raise invalid(path, f"{where} is {kind} link, not a {noun}")
    obj = group.get(name)
    if not isinstance(obj, h5py.Dataset if noun == "dataset" else h5py.Group):
        raise invalid(path, f"{where} is a {'group' if noun == 'dataset' else 'dataset'}, not a {noun}")
    return obj


def _dataset(
    group: Any, name: str, where: str, path: str | Path, required: bool = True, virtual: bool = False
) -> Any:
    """The dataset ``where`` (a hard link to a dataset with at least one dimension; virtual only where
    ``virtual`` allows it), or None if it is absent and not ``required``."""
    obj = _hard(group, name, where, path, "dataset", required)
    if obj is None:
        return None
    if obj.shape is None or len(obj.shape) < 1:
        raise invalid(path, f"{where} has no rows (a scalar dataset)")
    if obj.is_virtual and not virtual:
        raise invalid(path, f"{where} is a virtual dataset (featdump writes it as a plain one)")
    return obj


def _stored_rows_short(ds: Any, n: int) -> bool:
    """Does ``ds`` lack the storage for its first ``n`` rows? HDF5 reads unwritten rows as zeros
    without a word, and every row below a featdump counter was written, so its chunks must exist."""
    import math

    if n <= 0 or ds.is_virtual:
        return False
    if ds.chunks is None:  # contiguous (all or nothing: layout 1, H5D_CONTIGUOUS) or compact (always there)
        contiguous = ds.id.get_create_plist().get_layout() == 1
        return contiguous and ds.id.get_storage_size() < n * ds.dtype.itemsize * math.prod(int(d) for d in ds.shape[1:])
    chunks = math.prod(-(-int(size) // int(chunk)) for size, chunk in zip((n, *ds.shape[1:]), ds.chunks, strict=True))
    return ds.id.get_num_chunks() < chunks


def _whole(value: Any) -> int | None:
    """An HDF5 attribute as a whole number, or None when it is not one (floats, bools, strings, arrays)."""
    import numpy as np

    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def count_attr(attrs: Any, key: str, path: str | Path, default: int) -> int:
    """A counter attribute (``default`` when absent): a whole number >= 0, or UsageError."""
    if key not in attrs:
        return default
    raw = attrs[key]
    value = _whole(raw)
    if value is None:
        raise inconsistent(path, f"{key} is {_shown(raw)}, not a whole number")
    if value < 0:
        raise inconsistent(path, f"{key} is {value}, a negative count")
    return value


def _shown(raw: Any) -> str:
    import numpy as np

    if isinstance(raw, np.generic):
        raw = raw.item()
    raw = read_text(raw) if isinstance(raw, bytes) else raw
    text = repr(raw.tolist() if isinstance(raw, np.ndarray) else raw)
    return text if len(text) <= 40 else text[:37] + "..."


def _shard(attrs: Any, path: str | Path) -> tuple[int, int] | None:
    """``shard`` as (I, N) with 0 <= I < N, None when absent; two numbers, whatever N is, never a list of N."""
    import numpy as np

    if "shard" not in attrs:
        return None
    raw = attrs["shard"]
    arr = np.asarray(raw)
    values = [_whole(v) for v in arr.ravel()] if arr.ndim == 1 and arr.size == 2 else []
    if len(values) != 2 or values[0] is None or values[1] is None:
        raise inconsistent(path, f"shard is {_shown(raw)}, not [I, N]")
    index, count = values[0], values[1]
    if not (count >= 1 and 0 <= index < count):
        raise inconsistent(path, f"shard is [{index}, {count}], out of range (0 <= I < N)")
    return index, count


def check_file(h5: Any, path: str | Path) -> Counts:
    """The counters of an open featdump file, once its layout and counters hold up (UsageError naming
    what disagrees otherwise)."""
    attrs = h5.attrs
    version = read_attr(attrs.get("format_version", FORMAT_VERSION))
    if version not in (FORMAT_VERSION, RAGGED_VERSION):  # a later featdump's layout, or an edited attribute
        raise UsageError(f"{path} has format_version {version!r}; this featdump {__version__} reads 1 and 2: upgrade it")
    rows: dict[str, Any] = {}
    for name in ROW_DATASETS:
        ds = _dataset(h5, name, f"/{name}", path, required=name == "paths")
        if ds is not None:
            rows[f"/{name}"] = ds
    kept = _hard(h5, "meta", "/meta", path, "group", required=False) or {}  # --keep, --keep-columns
    for name in kept.keys():  # noqa: SIM118 - link names, nothing followed
        rows[f"/meta/{name}"] = _dataset(kept, name, f"/meta/{name}", path)
    failed = _hard(h5, "failed", "/failed", path, "group")
    failed_rows = {f"/failed/{name}": _dataset(failed, name, f"/failed/{name}", path) for name in ("paths", "errors")}
    features = _hard(h5, FEATURES, f"/{FEATURES}", path, "group")
    ragged: dict[str, tuple[Any, Any]] = {}  # name -> (features, cells): cells are row-aligned, features not
    for name in features.keys():  # noqa: SIM118 - link names, nothing followed
        why = unsafe_name(name)
        if why:  # a reader (export) would make a folder of it
            raise invalid(path, f"its layer name {printable(repr(name))} {why}, not one file name")
        ds = _dataset(features, name, f"/{FEATURES}/{name}", path, virtual=True)
        if to_str(ds.attrs.get("layout", "")) == "ragged":
            ragged[name] = (ds, _dataset(_hard(h5, CELLS, f"/{CELLS}", path, "group"), name, f"/{CELLS}/{name}", path))
            rows[f"/{CELLS}/{name}"] = ragged[name][1]
        else:
            rows[f"/{FEATURES}/{name}"] = ds

    num_images = count_attr(attrs, "num_images", path, 0)
    num_failed = count_attr(attrs, "num_failed", path, 0)
    inputs_done = count_attr(attrs, "inputs_done", path, num_images + num_failed)
    num_inputs = count_attr(attrs, "num_inputs", path, -1) if "num_inputs" in attrs else None
    for key, want, datasets in (("num_images", num_images, rows), ("num_failed", num_failed, failed_rows)):
        for where, ds in datasets.items():
            have = int(ds.shape[0])
            if want > have:
                raise inconsistent(path, f"{key} is {want} but {where} holds {have} rows")
            if _stored_rows_short(ds, want):
                raise inconsistent(path, f"{key} is {want} but {where} has storage for fewer rows (the rest were never written)")
    tables = {name: _check_cells(ds, cells, num_images, f"/{CELLS}/{name}", path) for name, (ds, cells) in ragged.items()}
    if inputs_done < num_images + num_failed and "/tiles" not in rows:  # --tiles: an image gives several rows
        raise inconsistent(
            path, f"inputs_done is {inputs_done}, fewer than num_images + num_failed ({num_images} + {num_failed})"
        )
    if num_inputs is not None and input_kind(attrs) == "tar":  # num_inputs counts tar files, inputs_done samples
        shard_done = tar_files_done(attrs) or 0
        if not 0 <= shard_done <= num_inputs:
            raise inconsistent(path, f"stream_mark names tar file {shard_done} but num_inputs is {num_inputs}")
    elif num_inputs is not None and inputs_done > num_inputs:
        raise inconsistent(path, f"inputs_done is {inputs_done} but num_inputs is {num_inputs}")
    return Counts(num_images, num_failed, inputs_done, num_inputs, _shard(attrs, path), tables)


def _check_cells(ds: Any, cells: Any, n: int, where: str, path: str | Path) -> Any:
    """A ragged layer's first ``n`` rows of ``/cells`` (N, 3) ``start, h, w`` as int64, checked: whole
    numbers, rows that follow each other from cell 0 with h, w >= 1, and cells that ``/features`` holds and wrote."""
    import numpy as np

    if cells.ndim != 2 or cells.shape[1] != 3 or not np.issubdtype(cells.dtype, np.integer) or ds.ndim != 2:
        raise invalid(path, f"{where} is not (N, 3) whole numbers start, h, w of an (cells, C) layer")
    table = cells[:n].astype(np.int64)
    size = table[:, 1] * table[:, 2]
    if n and ((table[:, 1:] < 1).any() or table[0, 0] != 0 or (table[1:, 0] != table[:-1, 0] + size[:-1]).any()):
        raise inconsistent(path, f"{where} does not list rows of cells one after another from cell 0 (start, h, w)")
    total = int((table[:, 0] + table[:, 1].astype(float) * table[:, 2]).max()) if n else 0  # float: h * w may not fit int64
    if total > ds.shape[0] or _stored_rows_short(ds, total):
        raise inconsistent(path, f"{where} needs {total} cells but the layer holds or wrote fewer")
    return table


def input_kind(attrs: Any) -> str:
    """The file's ``input_kind``: files | tar | table."""
    return to_str(attrs.get("input_kind", "files"))


def tar_files_done(attrs: Any) -> int | None:
    """Tar files a tar-shard file has finished: the first number of its committed ``stream_mark``
    ``[tar file, samples read in it]``; None without one (nothing committed yet, a merged file)."""
    mark = attrs.get("stream_mark")
    return int(mark[0]) if mark is not None and len(mark) == 2 else None


def tar_progress(samples: int, tar_files: int, complete: bool, files_done: int | None = None) -> str:
    """The one wording of a tar-shard file's progress, in its two units: ``inputs_done`` counts
    samples, ``num_inputs`` tar files."""
    shards = f"{tar_files} tar shard{'' if tar_files == 1 else 's'}"
    if complete:
        return f"{samples} samples read from {shards}"
    if files_done is not None:
        return f"{samples} samples read, {files_done} of {shards} done"
    return f"{samples} samples read ({shards})"


def check_same_settings(h5: Any, attrs: dict[str, Any], path: str | Path) -> None:
    """Exit 2 naming the first setting that differs between the file and this run."""
    if h5.attrs.get("format") != "featdump":
        raise UsageError(f"{path} is not a featdump file; pick another -o or pass --overwrite")
    if "merged_from" in h5.attrs:
        raise UsageError(f"--resume: {path} was made by `featdump merge`; resume its shard files, then merge again")
    if not (differs := first_difference((k for k in RESUME_KEYS if k in attrs), h5.attrs, attrs)):
        return
    key, have, want = differs
    if key in INPUT_KEYS and key != "shard":
        then = read_attr(h5.attrs.get("list_size", h5.attrs.get("num_inputs", "?")))
        now = attrs.get("list_size", attrs.get("num_inputs", "?"))
        what = {"tar": "tar shards", "table": "rows"}.get(input_kind(h5.attrs), "images")
        raise UsageError(
            f"--resume: the input list differs from the one {path} was started with ({then} {what} "
            f"then, {now} now, or other names); resume with the same inputs, or --overwrite to start again"
        )
    raise UsageError(
        f"--resume: {path} was made with {key}={have}, this run has {key}={want}; "
        "use the same settings, or --overwrite to start again"
    )


