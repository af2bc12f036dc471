"""Virtual datasets (merged files): where their source files are, and which cannot deliver rows.

The one resolver every reader uses (``show``, ``merge``, ``featdump.open``, ``viz``). It resolves a
source file name the way HDF5 does: ``"."`` is the virtual file itself, absolute names are taken
as they are, relative names are looked up under ``HDF5_VDS_PREFIX`` first (``${ORIGIN}`` standing
for the virtual file's folder) and then in the virtual file's folder.

HDF5 reads the rows of a missing source as the dataset's fill value, without any error. featdump's
merged files set the fill value to NaN (float features), so such rows read as NaN, never as
plausible zeros; these functions find the missing sources before anyone reads them. A source that
is the virtual file itself (HDF5 recurses until it crashes) or is not a featdump shard (say
``/etc/passwd``) is refused outright (:func:`refused_sources`), before any row is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump.errors import UsageError
from featdump.store.format import FEATURES
from featdump.text import first_line


@dataclass(frozen=True)
class SourceProblem:
    """A source of a virtual dataset that cannot deliver its rows.

    ``refused``: the source must never be read (the file itself, not a regular file, not HDF5, not a
    featdump shard, itself virtual): reading it may crash HDF5 or return another file's bytes as
    features. Otherwise it is missing or short (put the shard back).
    """

    source: str  # the file, resolved as HDF5 resolves it
    dataset: str
    reason: str
    refused: bool = False


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
    """Every source of the virtual datasets under ``/features`` that is missing, unreadable, short or
    refused (see :class:`SourceProblem`), checked before anything reads a row.

    A source must be another file (after resolving ``.``, ``HDF5_VDS_PREFIX``, ``${ORIGIN}``, links),
    a regular file, HDF5, a valid featdump file (:func:`~featdump.store.check.check_file`) whose
    dataset is under ``/features``, is not itself virtual (no cycles) and has the rows and row shape
    mapped. Sources are opened through the journal (:func:`~featdump.store.committed.open_committed`),
    as every featdump reader opens files. Empty for files without virtual datasets. Opens ``path`` on
    its own: call it while no other handle to ``path`` is open in this process.
    """
    import h5py

    from featdump.store.committed import open_committed

    p = Path(path)
    problems: list[SourceProblem] = []
    opened: dict[str, Any] = {}
    reported: set[tuple[str, str]] = set()
    try:
        with open_committed(p) as h5:
            features_link = h5.get(FEATURES, getlink=True)  # None when absent; never follows a link
            if not isinstance(features_link, h5py.HardLink):
                return []
            group = h5[FEATURES]
            for name in group.keys():  # noqa: SIM118 - link names, nothing followed
                if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                    continue  # check_file refuses links; nothing here follows one
                ds = group.get(name)
                if not isinstance(ds, h5py.Dataset) or not ds.is_virtual:
                    continue
                for vmap in ds.virtual_sources():
                    stored = stored_name(vmap)
                    source = str(source_path(p, stored))
                    key = (source, vmap.dset_name)
                    if key in reported:
                        continue
                    reason, refused = _source_reason(opened, p, stored, source, vmap, ds.shape[1:])
                    if reason:
                        reported.add(key)
                        problems.append(SourceProblem(source, vmap.dset_name, reason, refused))
    finally:
        for f, _refused in opened.values():
            if not isinstance(f, str):
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


def _is_self(vds: Path, stored: str, source: str) -> bool:
    if stored == ".":
        return True
    try:
        return os.path.samefile(source, vds)
    except OSError:
        return Path(source).resolve() == vds.resolve()


def _open_source(opened: dict[str, Any], source: str) -> tuple[Any, bool]:
    """The open source file, or ``(reason, refused)`` text when it cannot or must not be opened."""
    import h5py

    from featdump.store.check import check_file
    from featdump.store.committed import open_committed

    if source in opened:
        return opened[source]
    f: Any
    refused = True
    if not os.path.exists(source):
        f, refused = "file not found", False
    elif not os.path.isfile(source):
        f = "not a regular file"
    elif not h5py.is_hdf5(source):
        f = "not an HDF5 file (a virtual source must be a featdump shard)"
    else:
        try:
            f = open_committed(source)
        except OSError as exc:
            f, refused = f"cannot open: {first_line(exc)}", False
        else:
            fmt = f.attrs.get("format", "")
            if (fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else fmt) != "featdump":
                f.close()
                f = 'not a featdump file (no format="featdump" attribute)'
            else:
                try:
                    check_file(f, source)
                except UsageError as exc:
                    f.close()
                    f = f"not a valid featdump shard ({exc})"
    opened[source] = (f, refused)
    return opened[source]


def _source_reason(
    opened: dict[str, Any], vds: Path, stored: str, source: str, vmap: Any, row_shape: tuple[int, ...]
) -> tuple[str, bool]:
    """Why one mapping cannot deliver its rows (empty when it can), and whether it is refused."""
    import h5py

    if _is_self(vds, stored, source):
        return "the file itself (a virtual dataset reading its own file)", True
    f, refused = _open_source(opened, source)
    if isinstance(f, str):
        return f, refused
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
    have = int(ds.shape[0])
    need = _rows_needed(vmap)
    if have < need:
        return f"holds {have} rows of {dataset}, the merged file maps {need}", False
    return "", False


def refused_sources(path: str | Path) -> None:
    """Raise UsageError (exit 2) when a virtual dataset of ``path`` reads a source that must never be
    read: the file itself, or a file that is not a featdump shard."""
    for problem in check_sources(path):
        if problem.refused:
            raise _refusal(path, problem)


def _refusal(path: str | Path, problem: SourceProblem) -> UsageError:
    return UsageError(
        f"{path}: refusing to read its virtual dataset, which maps {problem.dataset} of {problem.source}: "
        f"{problem.reason}"
    )


def missing_sources(path: str | Path) -> list[str]:
    """Source files of a merged (virtual) file that cannot deliver their rows, as ``"FILE: why"``
    (e.g. ``/data/feats.shard-00001-of-00004.h5: file not found``); empty when all is well.
    A source that must never be read (:func:`refused_sources`) raises UsageError instead."""
    seen: dict[str, str] = {}
    for problem in check_sources(path):
        if problem.refused:
            raise _refusal(path, problem)
        seen.setdefault(problem.source, problem.reason)
    return [f"{source}: {reason}" for source, reason in seen.items()]

