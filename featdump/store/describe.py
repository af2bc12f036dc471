"""What a featdump file holds, for `featdump show`: datasets, provenance, failures, missing sources;
finished, partial, sharded or merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.store.check import RESUME_KEYS, Counts, check_file, input_kind, tar_files_done
from featdump.store.committed import open_committed
from featdump.store.format import load_codecs, read_attr, read_text, setting_value
from featdump.store.locks import journal_path
from featdump.store.vds import missing_sources, virtual_sources
from featdump.text import first_line, to_str

# Root attributes that are counters / state, shown in the summary rather than the provenance list.
STATE_KEYS = ("complete", "num_images", "num_failed", "inputs_done")


def open_checked(path: str | Path) -> tuple[Any, Counts]:
    """Open a featdump file read-only and check it (:func:`~featdump.store.check.check_file`).

    With h5py's default locking, as a plain ``h5py.File(path)``, so both can be open in one process
    (HDF5 refuses a second open with other locking flags). Writers take no HDF5 lock, so a file a
    run is still writing can be looked at.
    """
    import h5py

    load_codecs()
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file: {p}")
    if p.is_dir():
        raise UsageError(f"{p} is a folder; name a featdump .h5 file")
    if not p.is_file():  # a FIFO would block the read below; a device is no file of ours
        raise UsageError(f"{p} is not a regular file; name a featdump .h5 file")
    try:
        is_hdf5 = h5py.is_hdf5(str(p))
    except OSError as exc:
        raise FeatdumpError(f"cannot read {p}: {exc}") from None
    if not is_hdf5:
        raise UsageError(f"{p} is not an HDF5 file (featdump files are HDF5, written by `featdump extract`)")
    try:
        h5 = open_committed(p)  # through the journal where there is one, else h5py.File(p, "r")
    except OSError as exc:
        raise FeatdumpError(f"cannot open {p}: {first_line(exc, repr(exc))}") from None
    try:
        if to_str(h5.attrs.get("format", "")) != "featdump":
            top = ", ".join(sorted(h5.keys())[:8]) or "nothing"
            raise UsageError(
                f'{p} is an HDF5 file but not a featdump file (no format="featdump" attribute; it holds: {top})'
            )
        counts = check_file(h5, p)
    except BaseException:
        h5.close()
        raise
    return h5, counts


def check_virtual(path: str | Path) -> list[str]:
    """:func:`~featdump.store.vds.missing_sources` of a valid featdump file (UsageError otherwise).
    Call it while no other handle to ``path`` is open in this process."""
    open_checked(path)[0].close()  # exit 2 for a file that is not valid, before its sources are read
    return missing_sources(path)


# Registered HDF5 filter ids (https://github.com/HDFGroup/hdf5_plugins, RegisteredFilterPlugins.md).
_FILTER_NAMES = {1: "gzip", 307: "bzip2", 32000: "lzf", 32001: "blosc", 32004: "lz4", 32008: "bitshuffle", 32015: "zstd"}


def _filters(ds: Any) -> str:
    """Compression as a short name: gzip/lzf by h5py, plugins (Blosc2 zstd) from the filter pipeline."""
    if ds.compression and ds.compression != "unknown":  # h5py names plugin filters "unknown"
        opts = f"-{ds.compression_opts}" if ds.compression_opts not in (None, "") else ""
        return f"{ds.compression}{opts}"
    try:
        plist = ds.id.get_create_plist()
        names = []
        for i in range(plist.get_nfilters()):
            code, _flags, values, name = plist.get_filter(i)
            label = to_str(name).split()[0] if name else str(code)
            if label.lower() == "shuffle" or code == 2:
                continue
            if code in _FILTER_NAMES:
                label = _FILTER_NAMES[code]
                if values and code == 32015:  # Zstandard: values[0] is the level, a C int stored unsigned
                    level = values[0] - (1 << 32) if values[0] >= 1 << 31 else values[0]
                    label = f"zstd:{level}"
            if code == 32026:  # Blosc2: values[6] is the codec (5 = zstd)
                codecs = {0: "blosclz", 1: "lz4", 2: "lz4hc", 4: "zlib", 5: "zstd"}
                codec = codecs.get(values[6], "?") if len(values) > 6 else "?"
                label = f"blosc2-{codec}"
            names.append(label)
        return "+".join(names) or "none"
    except Exception:  # noqa: BLE001 - filter introspection is best effort
        return "?"


def summarize_file(path: str | Path, max_failures: int = 10) -> dict[str, Any]:
    """Everything ``show`` prints, as JSON-ready data."""
    p = Path(path)
    missing = check_virtual(p)  # before our own handle; refuses what must never be read
    h5, counts = open_checked(p)
    with h5:
        attrs = {k: read_attr(v) for k, v in h5.attrs.items()}
        sources = virtual_sources(h5, p)
        datasets = []
        for name, ds in h5["features"].items():  # /paths, /failed/* and /features: check_file saw to them
            rows = int(ds.shape[0]) if ds.shape else 0
            ragged = None
            if to_str(ds.attrs.get("layout", "")) == "ragged":  # rows are the /cells (checked)
                rows = int(h5["cells"][name].shape[0])
                grids = h5["cells"][name][: counts.num_images, 1:]
                ragged = {
                    "cells": int(grids.prod(axis=1).sum()),
                    "grid_min": grids.min(axis=0).tolist() if len(grids) else None,
                    "grid_max": grids.max(axis=0).tolist() if len(grids) else None,
                }
            mapped = sources.get(ds.name.lstrip("/"), [])
            raw = int(ds.dtype.itemsize) * int(ds.size)
            virtual = bool(ds.is_virtual)
            stored = 0 if virtual else int(ds.id.get_storage_size())
            datasets.append(
                {
                    "name": name,
                    "shape": list(ds.shape),
                    "dtype": str(ds.dtype),
                    "chunks": list(ds.chunks) if ds.chunks else None,
                    "compression": "virtual" if virtual else _filters(ds),
                    "stored_bytes": stored,
                    "raw_bytes": raw,
                    "ratio": round(stored / raw, 3) if raw else None,  # stored/raw, as in extract
                    "virtual": virtual,
                    "virtual_sources": len({e["file"] for e in mapped}),
                    "missing_sources": len({e["resolved"] for e in mapped if not e["exists"]}),
                    "uncommitted_rows": max(0, rows - counts.num_images),
                    "ragged": ragged,  # cells committed, smallest and largest h, w; None for a fixed layer
                    "attrs": {k: read_attr(v) for k, v in ds.attrs.items()},
                }
            )
        fp, fe = h5["failed/paths"], h5["failed/errors"]  # each holds num_failed rows at least
        failures = [{"path": read_text(fp[i]), "error": read_text(fe[i])} for i in range(min(max_failures, counts.num_failed))]
        provenance = {k: setting_value(v) if k in RESUME_KEYS else v for k, v in attrs.items() if k not in STATE_KEYS}
        info = {
            "file": str(p),
            "file_bytes": p.stat().st_size,
            "format_version": attrs.get("format_version"),
            "complete": bool(attrs.get("complete", False)),
            "num_images": counts.num_images,
            "rows_in_paths": int(h5["paths"].shape[0]),
            "num_failed": counts.num_failed,
            "inputs_done": counts.inputs_done,  # tar shards: samples read (and damaged-shard records)
            "num_inputs": attrs.get("num_inputs"),  # tar shards: tar files
            "input_kind": input_kind(attrs),
            "tar_files_done": tar_files_done(attrs),  # None unless a tar-shard file has committed rows
            "shard": attrs.get("shard"),
            "virtual": bool(sources),
            # a writer holds the file, or was killed holding it (--resume replays the journal)
            "journal": journal_path(p).exists(),
            "missing_sources": missing,
            "plain_reader": plain_reader_note(attrs, datasets),
            "datasets": datasets,
            "failures": failures,
            "attrs": provenance,
        }
    return info


def plain_reader_note(attrs: dict[str, Any], datasets: list[dict[str, Any]]) -> str | None:
    """What plain h5py needs to read the file, when it is compressed with a filter plugin (zstd,
    Blosc2): without ``import hdf5plugin`` HDF5 fails with an error that names no plugin."""
    codecs = {str(d["compression"]) for d in datasets} - {"none", "virtual", "?"}
    plugins = sorted(c for c in codecs if not c.startswith(("gzip", "lzf", "szip")))
    if str(attrs.get("compression", "")) == "zstd" and not plugins:  # a merged file: its shards hold the data
        plugins = ["zstd"]
    if not plugins:
        return None
    return (
        f"compressed with {', '.join(plugins)} (an HDF5 filter plugin): featdump reads it as it is; "
        "plain h5py needs `import hdf5plugin` before reading (pip install hdf5plugin)"
    )
