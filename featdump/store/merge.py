"""Join shard files into one featdump file: an HDF5 virtual file (default, no copy) or a copy.

What is joined and refused is the contract of docs/cluster.md; which files fit together is decided
by :mod:`featdump.store.mergecheck`. A virtual merge stores its source file names *relative to the
merged file* and a fill value of NaN, so a missing source reads as NaN, never as zeros.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError, is_out_of_space, os_error
from featdump.store.check import input_kind
from featdump.store.committed import open_committed
from featdump.store.format import (
    CELLS,
    FEATURES,
    compression_kwargs,
    extent,
    free_bytes,
    inputs_attr,
    load_codecs,
    read_attr,
    read_inputs_attr,
    read_text,
    set_attr,
    setting_value,
    utc_now,
    with_margin,
)
from featdump.store.mergecheck import Shard, check_runs, read_shard
from featdump.store.mergetemp import claim_temp, remove_stale_temps
from featdump.store.rowdata import row_blocks
from featdump.store.vds import check_sources
from featdump.text import fmt_bytes


@dataclass
class MergeSummary:
    output: str
    mode: str  # "virtual" or "copy"
    num_shards: int
    num_images: int
    num_failed: int
    num_inputs: int
    complete: bool
    layers: list[tuple[str, tuple[int, ...], str]]
    skipped: list[str]  # shards without rows
    partial: list[str]  # incomplete shards merged with allow_partial
    num_runs: int = 1  # independent runs joined one after the other
    bytes: int = 0
    input_kind: str = "files"  # files | tar | table: for tar, num_inputs counts tar files and inputs_done samples
    inputs_done: int = 0


def _relative(shard: Path, out_dir: Path) -> str:
    """The shard's path relative to the merged file's folder (POSIX separators)."""
    return Path(os.path.relpath(shard, out_dir)).as_posix()


def _opened(shards: Sequence[Shard]) -> Iterator[Any]:
    """The shards' files, opened in turn, each closed before the next opens: any number of shards
    fits the process's open-file limit (``ulimit -n``)."""
    for s in shards:
        with open_committed(s.path) as h5:
            yield h5


def _strings(shards: Sequence[Shard], key: str, counts: Sequence[int]) -> list[str]:
    """The first ``counts[i]`` strings of ``key`` in each file (checked: each holds that many);
    bytes that are not UTF-8 become ``\\xHH``, as featdump stores undecodable names."""
    return [read_text(v) for h5, n in zip(_opened(shards), counts, strict=True) if n for v in h5[key][:n]]


def merge_shards(
    shard_paths: Sequence[str | Path],
    output: str | Path,
    *,
    copy: bool = False,
    allow_partial: bool = False,
    overwrite: bool = False,
    command: str = "",
) -> MergeSummary:
    """Write ``output`` from the shards of one run, or from several whole runs joined in the order
    given; refuses (UsageError) anything that would not equal those runs' rows, one after the other."""
    from featdump.store.output import output_target

    load_codecs()
    out, out_st = output_target(Path(output))  # a symlink's target is what gets replaced; only regular files
    out_dir = out.parent.resolve() if str(out.parent) else Path.cwd()
    if not out_dir.is_dir():
        raise UsageError(f"-o {out}: folder {out.parent} does not exist")
    runs = check_runs([read_shard(p) for p in shard_paths], allow_partial)
    target = out_dir / out.name
    for s in (s for run in runs for s in run):
        if s.path == target:
            raise UsageError(f"-o {out} is one of the shards; write the merged file elsewhere")
    if out_st is not None and not overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    paths, ids = _row_names(runs)
    if copy:
        _check_room([s for run in runs for s in run], out_dir)

    remove_stale_temps(out_dir, out.name)
    tmp, fd = claim_temp(out_dir, out.name)
    try:
        summary = _write(runs, paths, ids, tmp, out_dir, copy=copy, command=command)
        if not copy and (problems := check_sources(tmp)):
            p = problems[0]
            raise FeatdumpError(f"merged file would not read {p.dataset} from {p.source}: {p.reason}")
        os.fsync(fd)
        os.replace(tmp, out)
    except (OSError, RuntimeError) as exc:  # h5py's: OSError, or RuntimeError with ENOSPC as text
        if isinstance(exc, RuntimeError) and not is_out_of_space(exc):
            raise
        raise os_error(exc, output, then="run the merge again (nothing was written)") from None
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)  # drops the lock that told other merges this temp file is alive
    summary.output = str(output)
    summary.bytes = out.stat().st_size
    return summary


def _check_room(shards: Sequence[Shard], out_dir: Path) -> None:
    """``--copy``: refuse up front when the folder lacks room, since HDF5 (2.0) can crash the process
    when a write fails for a full disk while the file is being closed."""
    stored = sum(s.stored_bytes for s in shards)
    need, free = with_margin(stored), free_bytes(out_dir)
    if need > free:
        raise UsageError(
            f"not enough space for merge --copy: the shards' features take {fmt_bytes(stored)}, "
            f"{fmt_bytes(need)} with margin, but {out_dir} has {fmt_bytes(free)} free; "
            "free some space, write -o elsewhere, or merge without --copy (a virtual file: no copy)"
        )


def _row_names(runs: Sequence[Sequence[Shard]]) -> tuple[list[str], list[str] | None]:
    """The merged file's ``/paths``, and its ``/ids`` when every file has them; UsageError when a
    path or an id is in two of the runs."""
    shards = [s for run in runs for s in run]
    counts = [s.num_images for s in shards]
    paths = _strings(shards, "paths", counts)
    ids = _strings(shards, "ids", counts) if all(s.has_ids for s in shards) else None
    if len(runs) > 1:
        _once(runs, paths, "path")
        if ids is not None:
            _once(runs, ids, "id")
    return paths, ids


def _once(runs: Sequence[Sequence[Shard]], values: Sequence[str], what: str) -> None:
    """No value (the rows' paths or ids, in merge order) may be in two runs: rows are found by it."""
    first: dict[str, Shard] = {}
    at = 0
    for run in runs:
        mine: dict[str, Shard] = {}
        for s in run:
            for v in values[at : at + s.num_images]:
                if v in first:
                    raise UsageError(
                        f"{first[v].shown} and {s.shown} both hold the {what} {v}: a merged file holds each "
                        f"{what} once (rows are found by {what}); extract only the images the other file lacks"
                    )
                mine.setdefault(v, s)
            at += s.num_images
        first.update(mine)


def _merged_attrs(runs: Sequence[Sequence[Shard]], *, copy: bool, command: str, out_dir: Path) -> dict[str, Any]:
    """The merged file's root attributes: the first file's settings, as one whole run of ``[0, 1]``
    covering the whole input list (several runs: their lists joined, in order)."""
    shards = [s for run in runs for s in run]
    heads = [run[0] for run in runs]
    ref = heads[0]
    attrs = {key: setting_value(value) for key, value in ref.attrs.items()}
    attrs.pop("stream_mark", None)  # the first shard's place in its tar files: none of the merged file's
    size = sum(h.list_size for h in heads)
    digest = str(ref.attrs.get("list_digest", ""))
    if len(runs) > 1:
        digest = hashlib.sha256("\n".join(str(h.attrs.get("list_digest", "")) for h in heads).encode()).hexdigest()
        given = [read_inputs_attr(h.attrs.get("inputs")) or [] for h in heads]
        attrs["inputs"] = inputs_attr(list(dict.fromkeys(i for g in given for i in g)))
        attrs["list_size"] = size
        attrs["list_digest"] = digest
    attrs.update(
        {
            "shard": [0, 1],
            "num_images": sum(s.num_images for s in shards),
            "num_failed": sum(s.num_failed for s in shards),
            "inputs_done": sum(s.inputs_done for s in shards),
            "num_inputs": size,
            "input_digest": digest,
            "complete": all(s.complete for s in shards),
            "created": utc_now(),
            "command": command,
            "extract_command": " ; ".join(str(h.attrs.get("command", "")) for h in heads),  # where inputs were (viz)
            "merged_from": [_relative(s.path, out_dir) for s in shards],
            "merge": "copy" if copy else "virtual",
        }
    )
    return attrs


def _write(
    runs: Sequence[Sequence[Shard]],
    paths: Sequence[str],
    ids: Sequence[str] | None,
    tmp: Path,
    out_dir: Path,
    *,
    copy: bool,
    command: str,
) -> MergeSummary:
    import h5py
    import numpy as np

    shards = [s for run in runs for s in run]
    ref = shards[0]
    used = [s for s in shards if s.num_images > 0]
    skipped = [s.shown for s in shards if s.num_images == 0]
    partial = [s.shown for s in shards if not s.complete]
    attrs = _merged_attrs(runs, copy=copy, command=command, out_dir=out_dir)
    text = h5py.string_dtype()
    # without HDF5's own file lock: it would be exclusive, which our shared one on the claimed temp
    # file (it marks the file alive) refuses. HDF5's own driver, not a Python file object: an I/O
    # error (a full disk) in h5py's fileobj callbacks leaves HDF5 in a state that can crash
    with open_committed(ref.path) as ref_h5, h5py.File(tmp, "w", libver="earliest", track_order=True, locking=False) as h5:
        for key, value in attrs.items():
            set_attr(h5, key, value)

        h5.create_dataset("paths", data=np.array(paths, dtype=object), dtype=text, maxshape=(None,), chunks=(4096,))
        if ids is not None:  # the inputs provided ids (tar shards, --id-column)
            h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=text, maxshape=(None,), chunks=(4096,))
        for name in ref_h5.get("meta", ()):  # --keep, --keep-columns: small, always copied
            kept = _strings(shards, f"meta/{name}", [s.num_images for s in shards])
            h5.create_dataset(f"meta/{name}", data=np.array(kept, dtype=object), dtype=text, maxshape=(None,), chunks=(4096,))
        # one pass over the shards: each one's rows (a ragged layer's: cells), dataset shapes, /cells
        # tables and /geometry, /tiles rows (small: always copied; /tiles: --tiles files only)
        ragged = list(ref_h5.get(CELLS, ()))
        sizes: dict[str, list[tuple[int, Any]]] = {name: [] for name in ref.layers}  # (rows, dataset shape) per shard
        held: dict[str, list[Any]] = {key: [] for key in ("geometry", "tiles", *(f"{CELLS}/{name}" for name in ragged))}
        for s, f in zip(shards, _opened(shards), strict=True):
            for name in ref.layers:
                sizes[name].append((extent(f, name, s.num_images), f[FEATURES][name].shape))
            for key, rows in held.items():
                rows.append(f[key][: s.num_images] if key in f else None)
        for key in ("geometry", "tiles"):
            rows = held[key]
            if all(r is not None for r in rows):
                geo = h5.create_dataset(key, data=np.concatenate(rows), maxshape=(None, rows[0].shape[1]), chunks=(256, rows[0].shape[1]))
                for name, value in ref_h5[key].attrs.items():
                    set_attr(geo, name, read_attr(value))
        failed = h5.create_group("failed")
        for key in ("paths", "errors", "ids") if ids is not None else ("paths", "errors"):
            rows = _strings(shards, f"failed/{key}", [s.num_failed for s in shards])
            failed.create_dataset(key, data=np.array(rows, dtype=object), dtype=text, maxshape=(None,), chunks=(256,))

        group = h5.create_group(FEATURES, track_order=True)
        for name, (shape, dtype) in ref.layers.items():
            src0 = ref_h5[FEATURES][name]
            counts = [size for size, _ in sizes[name]]
            *starts, total = np.cumsum([0, *counts]).tolist()  # each file's first row (ragged: cell) here
            if name in ragged:  # each file's cells, their starts shifted by the cells before
                tables = [t + [at, 0, 0] for t, at in zip(held[f"{CELLS}/{name}"], starts, strict=True)]
                h5.create_dataset(f"{CELLS}/{name}", data=np.concatenate(tables).astype(np.int64), maxshape=(None, 3), chunks=(4096, 3))
            if copy or not used:
                filters = {} if not used else compression_kwargs(str(ref.attrs.get("compression", "none")), dtype)
                ds = group.create_dataset(
                    name,
                    shape=(total, *shape),
                    maxshape=(None, *shape),
                    dtype=dtype,
                    chunks=src0.chunks or True,
                    **filters,
                )
                for at, size, f in zip(starts, counts, _opened(shards), strict=True):
                    src = f[FEATURES][name]
                    for a, b in row_blocks(src, 0, size):
                        ds[at + a : at + b] = src[a:b]
            else:
                layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
                for s, at, (size, src_shape) in zip(shards, starts, sizes[name], strict=True):
                    if size:
                        stored = _relative(s.path, out_dir).replace("%", "%%")  # HDF5 reads %b etc. in file names
                        layout[at : at + size] = h5py.VirtualSource(stored, f"{FEATURES}/{name}", shape=src_shape)[0:size]
                ds = group.create_virtual_dataset(name, layout, fillvalue=np.nan)
            for key, value in src0.attrs.items():
                set_attr(ds, key, read_attr(value))
    return MergeSummary(
        output=str(tmp),
        mode="copy" if copy else "virtual",
        num_shards=len(shards),
        num_images=int(attrs["num_images"]),
        num_failed=int(attrs["num_failed"]),
        num_inputs=int(attrs["num_inputs"]),
        input_kind=input_kind(attrs),
        inputs_done=int(attrs["inputs_done"]),
        complete=not partial,
        layers=[(name, shape, dtype) for name, (shape, dtype) in ref.layers.items()],
        skipped=skipped,
        partial=partial,
        num_runs=len(runs),
    )
