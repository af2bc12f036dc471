"""Virtual datasets (merged files): where their source files are, and which cannot deliver rows.

:func:`source_path` is the one resolver every reader uses; it finds a source file the way HDF5 does.
HDF5 reads the rows of a missing source as the fill value (NaN in featdump's merged files) without
an error, so these functions find missing sources before anyone reads them. A source that is the
virtual file itself (HDF5 recurses until it crashes) or not a featdump shard is refused outright.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.store.check import INPUT_KEYS, RESUME_KEYS, check_file
from featdump.store.committed import open_committed
from featdump.store.format import FEATURES, first_difference, read_text
from featdump.text import first_line, to_str


@dataclass(frozen=True)
class SourceProblem:
    """A source of a virtual dataset that cannot deliver its rows: missing or short, or ``refused``
    (never to be read: reading it may crash HDF5 or return another file's bytes as features)."""

    source: str  # the file, resolved as HDF5 resolves it
    dataset: str
    reason: str
    refused: bool = False


def stored_name(vmap: Any) -> str:
    """A virtual mapping's source file name as written (HDF5 stores a literal ``%`` as ``%%``)."""
    return str(vmap.file_name).replace("%%", "%")


def source_path(vds_file: str | Path, file_name: str) -> Path:
    """Where a virtual dataset's source ``file_name`` lives, for the virtual file ``vds_file``, as HDF5
    looks: ``.`` (the file itself), absolute, under ``HDF5_VDS_PREFIX`` (``${ORIGIN}``), its folder."""
    vds = Path(vds_file).resolve()
    if file_name == ".":
        return vds
    src = Path(file_name)
    if src.is_absolute():
        return src
    prefix = os.environ.get("HDF5_VDS_PREFIX")
    if prefix:
        candidate = Path(prefix.replace("${ORIGIN}", str(vds.parent))) / src
        if candidate.exists():
            return candidate
    return vds.parent / src


def virtual_sources(h5: Any, path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Per virtual dataset of the open file ``h5`` (at ``path``): its sources, each with ``file``,
    ``dataset``, ``resolved`` and ``exists``."""
    import h5py

    out: dict[str, list[dict[str, Any]]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            out[name] = []
            for vmap in obj.virtual_sources():
                resolved = source_path(path, stored_name(vmap))
                out[name].append({"file": stored_name(vmap), "dataset": vmap.dset_name, "resolved": str(resolved), "exists": resolved.exists()})

    h5.visititems(visit)
    return out


def source_spans(ds: Any, path: str | Path) -> list[tuple[int, str, str, int]]:
    """A virtual dataset's mappings in row order, for :func:`read_rows`: the first row of each, its
    source file (resolved as HDF5 does), the source dataset and the source's first row."""
    from h5py import h5s

    spans = []
    for m in ds.virtual_sources():
        src_lo = 0 if m.src_space.get_select_type() == h5s.SEL_ALL else int(m.src_space.get_select_bounds()[0][0])
        spans.append((int(m.vspace.get_select_bounds()[0][0]), str(source_path(path, stored_name(m))), m.dset_name, src_lo))
    return sorted(spans)


def read_rows(ds: Any, rows: Any, spans: list[tuple[int, str, str, int]] | None, path: str | Path) -> Any:
    """Sorted unique ``rows`` of ``ds`` as one array. A virtual one (``spans`` from :func:`source_spans`)
    is read from its source files, each opened for the read only, never through HDF5's virtual
    dataset: HDF5 holds the sources open, and reads a source it cannot open (gone, or past the
    open-file limit) as the fill value without a word. A gone source is a FeatdumpError naming it."""
    import numpy as np

    if spans is None:
        return _sorted_rows(ds, rows)
    out = np.empty((len(rows), *ds.shape[1:]), dtype=ds.dtype)
    src = np.searchsorted(np.array([s[0] for s in spans], dtype=np.int64), rows, side="right") - 1
    for i in np.unique(src):
        lo, source, dataset, src_lo = spans[i]
        if not os.path.exists(source):
            raise FeatdumpError(
                f"{path}: the virtual source {source} of {ds.name} is gone (its rows would read as "
                "the fill value): put it back, or merge again"
            )
        at = np.flatnonzero(src == i)
        with open_committed(source) as f:
            out[at] = _sorted_rows(f[dataset], rows[at] - lo + src_lo)
    return out


def read_span(ds: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of a layer's dataset: ``ds[a:b]``, or for a virtual one :func:`read_rows`."""
    import numpy as np

    if not ds.is_virtual or a >= b:
        return ds[a:b]
    path = ds.file.filename
    return read_rows(ds, np.arange(a, b), source_spans(ds, path), path)


def _sorted_rows(ds: Any, rows: Any) -> Any:
    lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
    return ds[lo:hi] if hi - lo == len(rows) else ds[rows]


def check_sources(path: str | Path) -> list[SourceProblem]:
    """Every source of the virtual datasets under ``/features`` that cannot deliver its rows.
    Opens ``path`` on its own: call it while no other handle to ``path`` is open in this process."""
    import h5py

    p = Path(path)
    maps: dict[str, list[tuple[Any, tuple[int, ...]]]] = {}  # source -> (mapping, row shape)
    ends: dict[str, tuple[str, str, int]] = {}  # source -> the merged file's paths at its rows 0 and last
    with open_committed(p) as h5:
        features_link = h5.get(FEATURES, getlink=True)  # None when absent; never follows a link
        if not isinstance(features_link, h5py.HardLink):
            return []
        group = h5[FEATURES]
        for name in group.keys():  # noqa: SIM118 - link names, nothing followed
            if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                continue  # check_file refuses links; nothing here follows one
            ds = group.get(name)
            if isinstance(ds, h5py.Dataset) and ds.is_virtual:
                for vmap in ds.virtual_sources():
                    source = str(source_path(p, stored_name(vmap)))
                    maps.setdefault(source, []).append((vmap, ds.shape[1:]))
                    if source not in ends and "paths" in h5 and read_text(ds.attrs.get("layout", "")) != "ragged":
                        (lo, *_), (hi, *_) = vmap.vspace.get_select_bounds()  # rows of images (a ragged layer's: cells)
                        if _rows_needed(vmap) == hi - lo + 1 and hi < len(h5["paths"]):  # the source's rows 0 .. hi - lo
                            ends[source] = (read_text(h5["paths"][lo]), read_text(h5["paths"][hi]), int(hi - lo))
        settings = {k: h5.attrs.get(k) for k in RESUME_KEYS if k not in INPUT_KEYS and k in h5.attrs}
    problems: list[SourceProblem] = []
    for source, mappings in maps.items():  # one source open at a time: thousands of shards fit any fd limit
        self_ref = _is_self(p, source)  # a stored "." resolves to the file itself
        f, refused = ("the file itself (a virtual dataset reading its own file)", True) if self_ref else _open_source(source)
        try:
            if not isinstance(f, str) and (changed := _changed(f, settings, ends.get(source))):
                problems.append(SourceProblem(source, mappings[0][0].dset_name, changed, True))
                continue
            reported: set[str] = set()
            for vmap, row_shape in mappings:
                reason, refused_here = (f, refused) if isinstance(f, str) else _source_reason(f, vmap, row_shape)
                if reason and vmap.dset_name not in reported:
                    reported.add(vmap.dset_name)
                    problems.append(SourceProblem(source, vmap.dset_name, reason, refused_here))
        finally:
            if not isinstance(f, str):
                f.close()
    return problems


def _changed(f: Any, settings: dict[str, Any], ends: tuple[str, str, int] | None) -> str:
    """Why a source is no longer the shard the merged file was made from (empty when it still is):
    another setting, or other images at the first or last row it maps (a shard extracted again)."""
    if differs := first_difference(settings, f.attrs, settings):
        key, have, want = differs
        return f"it was made with {key}={have}, the merged file with {key}={want}; merge again"
    if ends and "paths" in f and len(f["paths"]) > ends[2]:  # a short source is named by _source_reason
        first, last = read_text(f["paths"][0]), read_text(f["paths"][ends[2]])
        if (first, last) != ends[:2]:
            where = (first, ends[0]) if first != ends[0] else (last, ends[1])
            return f"its rows hold other images now ({where[0]!r} where the merged file has {where[1]!r}); merge again"
    return ""


def _rows_needed(vmap: Any) -> int:
    """How many rows of the source a mapping reads: its selection's last row + 1, or, when it maps
    the whole source (HDF5 then keeps no extent), as many rows as it fills in the virtual dataset."""
    from h5py import h5s

    if vmap.src_space.get_select_type() == h5s.SEL_ALL:
        lo, hi = vmap.vspace.get_select_bounds()
        return int(hi[0]) - int(lo[0]) + 1
    return int(vmap.src_space.get_select_bounds()[1][0]) + 1


def _is_self(vds: Path, source: str) -> bool:
    try:
        return os.path.samefile(source, vds)
    except OSError:
        return Path(source).resolve() == vds.resolve()


def _open_source(source: str) -> tuple[Any, bool]:
    """The open source file, or ``(reason, refused)`` text when it cannot or must not be opened."""
    import h5py

    if not os.path.exists(source):
        return "file not found", False
    if not os.path.isfile(source):
        return "not a regular file", True
    if not h5py.is_hdf5(source):
        return "not an HDF5 file (a virtual source must be a featdump shard)", True
    try:
        f = open_committed(source)
    except OSError as exc:
        return f"cannot open: {first_line(exc)}", False
    if to_str(f.attrs.get("format", "")) != "featdump":
        f.close()
        return 'not a featdump file (no format="featdump" attribute)', True
    try:
        check_file(f, source)
    except UsageError as exc:
        f.close()
        return f"not a valid featdump shard ({exc})", True
    return f, False


def _source_reason(f: Any, vmap: Any, row_shape: tuple[int, ...]) -> tuple[str, bool]:
    """Why one mapping onto the open source ``f`` cannot deliver its rows (empty when it can), and
    whether it is refused."""
    import h5py

    dataset = vmap.dset_name
    parts = dataset.strip("/").split("/")
    if len(parts) != 2 or parts[0] != FEATURES:
        return f"maps {dataset}, not a dataset under /{FEATURES}", True
    group = f[FEATURES]
    if parts[1] not in group.keys():  # noqa: SIM118 - `in` would follow a dangling link
        return f"has no dataset {dataset}", False
    ds = group.get(parts[1])
    if not isinstance(ds, h5py.Dataset):
        return f"{dataset} is not a dataset", True
    if ds.is_virtual:
        return f"{dataset} is itself virtual (a merged file, not a shard)", True
    if tuple(ds.shape[1:]) != tuple(row_shape):
        return f"{dataset} has rows of shape {tuple(ds.shape[1:])}, the merged file expects {tuple(row_shape)}", True
    have, need = int(ds.shape[0]), _rows_needed(vmap)
    if have < need:
        return f"holds {have} rows of {dataset}, the merged file maps {need}", False
    return "", False


def missing_sources(path: str | Path) -> list[str]:
    """Source files of a merged file that cannot deliver their rows, as ``"FILE: why"``; a source
    that must never be read raises UsageError instead."""
    seen: dict[str, str] = {}
    for problem in check_sources(path):
        if problem.refused:
            raise UsageError(
                f"{path}: refusing to read its virtual dataset, which maps {problem.dataset} of {problem.source}: "
                f"{problem.reason}"
            )
        seen.setdefault(problem.source, problem.reason)
    return [f"{source}: {reason}" for source, reason in seen.items()]

