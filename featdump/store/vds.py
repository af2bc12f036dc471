"""Virtual datasets (merged files): where their source files are, and which cannot deliver rows.

The one resolver every reader uses (``show``, ``merge``, ``featdump.open``, ``viz``). It resolves a
source file name the way HDF5 does: ``"."`` is the virtual file itself, absolute names are taken
as they are, relative names are looked up under ``HDF5_VDS_PREFIX`` first (``${ORIGIN}`` standing
for the virtual file's folder) and then in the virtual file's folder.

HDF5 reads the rows of a missing source as the dataset's fill value, without any error. featdump's
merged files set the fill value to NaN (float features), so such rows read as NaN, never as
plausible zeros; these functions find the missing sources before anyone reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump.store.format import FEATURES
from featdump.text import first_line


@dataclass(frozen=True)
class SourceProblem:
    """A source of a virtual dataset that cannot deliver its rows."""

    source: str  # the file, resolved as HDF5 resolves it
    dataset: str
    reason: str


def stored_name(vmap: Any) -> str:
    """A virtual mapping's source file name as written (HDF5 stores a literal ``%`` as ``%%``)."""
    return str(vmap.file_name).replace("%%", "%")


def source_path(vds_file: str | Path, file_name: str) -> Path:
    """Where a virtual dataset's source ``file_name`` lives, for the virtual file ``vds_file``."""
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
            entries = []
            for vmap in obj.virtual_sources():
                stored = stored_name(vmap)
                resolved = source_path(path, stored)
                entries.append(
                    {"file": stored, "dataset": vmap.dset_name, "resolved": str(resolved), "exists": resolved.exists()}
                )
            out[name] = entries

    h5.visititems(visit)
    return out


def check_sources(path: str | Path) -> list[SourceProblem]:
    """Every source of the virtual datasets under ``/features`` that is missing, unreadable or short.

    Sources are opened through the journal (:func:`~featdump.store.journal.open_committed`), as
    every featdump reader opens files. Empty for files without virtual datasets. Opens ``path`` on
    its own: call it while no other handle to ``path`` is open in this process.
    """
    from featdump.store.journal import open_committed

    p = Path(path)
    problems: list[SourceProblem] = []
    opened: dict[str, Any] = {}
    reported: set[tuple[str, str]] = set()
    try:
        with open_committed(p) as h5:
            if FEATURES not in h5:
                return []
            for ds in h5[FEATURES].values():
                if not ds.is_virtual:
                    continue
                for vmap in ds.virtual_sources():
                    stored = stored_name(vmap)
                    if stored == ".":
                        continue  # the file itself
                    source = str(source_path(p, stored))
                    need = _rows_needed(vmap)
                    reason = _source_reason(opened, source, vmap.dset_name, need)
                    if reason and (source, vmap.dset_name) not in reported:
                        reported.add((source, vmap.dset_name))
                        problems.append(SourceProblem(source, vmap.dset_name, reason))
    finally:
        for f in opened.values():
            if f is not None:
                f.close()
    return problems


def _rows_needed(vmap: Any) -> int:
    """How many rows of the source a mapping reads: its selection's last row + 1, or, when it maps
    the whole source (HDF5 then keeps no extent), as many rows as it fills in the virtual dataset."""
    from h5py import h5s

    if vmap.src_space.get_select_type() == h5s.SEL_ALL:
        lo, hi = vmap.vspace.get_select_bounds()
        return int(hi[0]) - int(lo[0]) + 1
    return int(vmap.src_space.get_select_bounds()[1][0]) + 1


def _source_reason(opened: dict[str, Any], source: str, dataset: str, need: int) -> str:
    from featdump.store.journal import open_committed

    if source not in opened:
        if not os.path.exists(source):
            opened[source] = None
            return "file not found"
        try:
            opened[source] = open_committed(source)
        except OSError as exc:
            opened[source] = None
            return f"cannot open: {first_line(exc)}"
    f = opened[source]
    if f is None:
        return "file not found" if not os.path.exists(source) else "cannot open"
    if dataset not in f:
        return f"has no dataset {dataset}"
    have = int(f[dataset].shape[0])
    if have < need:
        return f"holds {have} rows of {dataset}, the merged file maps {need}"
    return ""


def missing_sources(path: str | Path) -> list[str]:
    """Source files of a merged (virtual) file that cannot deliver their rows, as ``"FILE: why"``
    (e.g. ``/data/feats.shard-00001-of-00004.h5: file not found``); empty when all is well."""
    seen: dict[str, str] = {}
    for problem in check_sources(path):
        seen.setdefault(problem.source, problem.reason)
    return [f"{source}: {reason}" for source, reason in seen.items()]

