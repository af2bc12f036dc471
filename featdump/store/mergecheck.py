"""Which files a merge takes, in which order, or why not: reading each file's attributes
(:func:`read_shard`) and checking that they are the shards of one run, or several whole runs with
one meaning (:func:`check_runs`). Writing the merged file is featdump/store/merge.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import filterfalse, islice
from pathlib import Path
from typing import Any

from featdump.data.sources import shard_bounds
from featdump.errors import FeatdumpError, UsageError
from featdump.store.check import (
    INPUT_KEYS,
    RESUME_KEYS,
    check_file,
    count_attr,
    input_kind,
    tar_files_done,
    tar_progress,
)
from featdump.store.committed import open_committed
from featdump.store.format import FEATURES, first_difference, read_attr, setting_text
from featdump.store.vds import missing_sources
from featdump.text import first_line

# Settings every file of one merge must share: what the rows mean. Which inputs a file covers
# (INPUT_KEYS) is checked shard by shard within a run and differs between runs.
MERGE_KEYS = ("format_version",) + tuple(k for k in RESUME_KEYS if k not in INPUT_KEYS)
_SHARD_NAME = re.compile(r"^(?P<stem>.*)\.shard-(?P<i>\d+)-of-(?P<n>\d+)(?P<ext>\.[^.]*)?$")


@dataclass(frozen=True)
class Shard:
    """What merge needs to know about one shard file."""

    path: Path  # absolute
    shown: str  # as the user named it
    index: int
    count: int
    complete: bool
    num_images: int
    num_failed: int
    inputs_done: int
    num_inputs: int
    list_size: int  # images in the whole input list (all shards)
    has_ids: bool  # /ids: the inputs gave ids (tar shards, --id-column)
    attrs: dict[str, Any] = field(repr=False)
    layers: dict[str, tuple[tuple[int, ...], str]] = field(repr=False)  # name -> (row shape, dtype)
    stored_bytes: int = 0  # the features' bytes on disk (what merge --copy writes again)


# --------------------------------------------------------------------------- reading shards


def read_shard(path: str | Path) -> Shard:
    """Open one shard read-only and collect its attributes and layer shapes."""
    import h5py

    shown = str(path)
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"shard not found: {shown}")
    if not h5py.is_hdf5(p):
        raise UsageError(f"{shown} is not an HDF5 file")
    try:
        h5 = open_committed(p)
    except OSError as exc:
        raise FeatdumpError(f"cannot open shard {shown}: {first_line(exc)}") from None
    with h5:
        attrs = {k: read_attr(v) for k, v in h5.attrs.items()}
        if attrs.get("format") != "featdump":
            raise UsageError(f"{shown} is not a featdump file")
        if "merged_from" in attrs:
            raise UsageError(
                f"{shown} is itself a merged file; merge the original files it was made from "
                "(its merged_from attribute lists them)"
            )
        counts = check_file(h5, shown)  # counters and shard [I, N] checked before any is used
        if counts.shard is None:
            raise UsageError(f"{shown} records no shard [I, N]; is it from an older featdump?")
        if "list_digest" not in attrs:
            raise UsageError(f"{shown} records no digest of the whole input list (older featdump); extract it again")
        list_size = count_attr(h5.attrs, "list_size", shown, 0)
        features = h5[FEATURES]  # hard links to datasets: check_file saw to it
        layers = {name: (tuple(int(d) for d in ds.shape[1:]), str(ds.dtype)) for name, ds in features.items()}
        virtual = [name for name, ds in features.items() if ds.is_virtual]
        stored = sum(int(ds.id.get_storage_size()) for ds in features.values())
        shard = Shard(
            path=p.resolve(),
            shown=shown,
            index=counts.shard[0],
            count=counts.shard[1],
            complete=bool(attrs.get("complete", False)),
            num_images=counts.num_images,
            num_failed=counts.num_failed,
            inputs_done=counts.inputs_done,
            num_inputs=counts.num_inputs or 0,
            list_size=list_size,
            has_ids="ids" in h5.keys(),  # noqa: SIM118 - link names (check_file saw it is a dataset)
            attrs=attrs,
            layers=layers,
            stored_bytes=stored,
        )
    if virtual:  # shards hold their rows; say first if the sources are ones that must never be read
        missing_sources(shown)
        raise UsageError(
            f"{shown}: /{FEATURES}/{virtual[0]} is a virtual dataset, so {shown} is not a shard file; "
            "merge the shard files themselves"
        )
    return shard


def _expected_name(example: Shard, index: int) -> str:
    m = _SHARD_NAME.match(example.path.name)
    if not m:
        return f"shard {index} of {example.count}"
    width = len(m.group("i"))
    name = f"{m.group('stem')}.shard-{index:0{width}d}-of-{m.group('n')}{m.group('ext') or ''}"
    return str(Path(example.shown).parent / name)


def _run_key(s: Shard) -> tuple[str, int, int]:
    """Which run a file belongs to: the whole input list it was cut from, and into how many blocks."""
    return setting_text(s.attrs.get("list_digest")), s.list_size, s.count


def check_runs(files: Sequence[Shard], allow_partial: bool = False) -> list[list[Shard]]:
    """The runs to join, in the order given, each its shards in index order; or a UsageError naming
    the first file that does not fit. Several runs are joined only when each is whole; otherwise the
    files are checked as the shards of one run (:func:`check_shards`), which names what does not fit."""
    runs: dict[tuple[str, int, int], list[Shard]] = {}
    for s in files:
        runs.setdefault(_run_key(s), []).append(s)
    # a run is whole when it holds every shard index (indices are checked to lie in [0, count))
    if len(runs) <= 1 or not all(len({s.index for s in run}) == run[0].count for run in runs.values()):
        return [check_shards(files, allow_partial)]
    ordered = [check_shards(run, allow_partial) for run in runs.values()]
    ref = ordered[0][0]
    for run in ordered[1:]:
        s = run[0]
        _check_meaning(s, ref, "files merged together need the same settings")
        if input_kind(s.attrs) != input_kind(ref.attrs):
            raise UsageError(
                f"{s.shown} was made from {input_kind(s.attrs)} inputs, {ref.shown} from {input_kind(ref.attrs)}; "
                "merge runs over one kind of input (image files, tar shards or a table)"
            )
        if s.has_ids != ref.has_ids:
            with_ids, without = (s, ref) if s.has_ids else (ref, s)
            raise UsageError(
                f"{with_ids.shown} has /ids (its inputs gave ids), {without.shown} has none; "
                "merge files that both have ids, or both have none"
            )
    return ordered


def _check_meaning(s: Shard, ref: Shard, rule: str) -> None:
    """UsageError naming the first setting (or the layers) in which ``s`` differs from ``ref``."""
    if differs := first_difference(MERGE_KEYS, s.attrs, ref.attrs):
        key, have, want = differs
        raise UsageError(f"{s.shown} was made with {key}={have}, {ref.shown} with {key}={want}; {rule}")
    if s.layers != ref.layers:
        raise UsageError(f"{s.shown} holds layers {_layers(s)}, {ref.shown} holds {_layers(ref)}")


def check_shards(shards: Sequence[Shard], allow_partial: bool = False) -> list[Shard]:
    """The shards in index order, or a UsageError naming the first shard that does not fit."""
    if not shards:
        raise UsageError("no shard files given; e.g. featdump merge feats.shard-*.h5 -o feats.h5")
    seen: dict[Path, Shard] = {}
    for s in shards:
        if s.path in seen:
            raise UsageError(f"{s.shown} is given twice (also as {seen[s.path].shown})")
        seen[s.path] = s
    count = shards[0].count
    for s in shards:
        if s.count != count:
            raise UsageError(
                f"{s.shown} is shard {s.index} of {s.count}, but {shards[0].shown} is of {count}: "
                "merge the shards of one run (or several runs, each with all its shards)"
            )
    by_index: dict[int, Shard] = {}
    for s in shards:
        if s.index in by_index:
            other = by_index[s.index]
            _check_meaning(s, other, "they cover the same images, so they cannot be merged")
            whole = "a whole run" if count == 1 else f"shard {s.index} of {count}"
            raise UsageError(
                f"{s.shown} and {other.shown} are both {whole} over the same images (the same rows twice); give one"
            )
        by_index[s.index] = s
    ordered = [by_index[i] for i in sorted(by_index)]
    if len(by_index) < count:  # count comes from the files: never build anything count long
        absent = count - len(by_index)
        missing = list(islice(filterfalse(by_index.__contains__, range(count)), 6))  # lazy: any count
        more = f" (and {absent - 1} more: {', '.join(map(str, missing[1:6]))}{'...' if absent > 6 else ''})"
        raise UsageError(
            f"shard {missing[0]} of {count} is missing: {_expected_name(ordered[0], missing[0])}"
            f"{more if absent > 1 else ''}; give all {count} shards"
        )
    ref = ordered[0]
    for s in ordered[1:]:
        if _run_key(s) != _run_key(ref):
            raise UsageError(
                f"{s.shown} was made from another input list than {ref.shown} "
                f"({s.list_size} vs {ref.list_size} images, or other paths); "
                "run every shard over the same input"
            )
        _check_meaning(s, ref, "shards of one merge need the same settings")
    total = ref.list_size
    for s in ordered:
        start, stop = shard_bounds(total, s.index, count)
        if s.num_inputs != stop - start:
            raise UsageError(
                f"{s.shown} covers {s.num_inputs} inputs, but block {s.index} of {count} of the "
                f"{total}-image list has {stop - start}; was it made by another version of featdump?"
            )
        if not s.complete and not allow_partial:
            if input_kind(s.attrs) == "tar":
                done = tar_progress(s.inputs_done, s.num_inputs, False, tar_files_done(s.attrs))
            else:
                done = f"{s.inputs_done} of {s.num_inputs} inputs done"
            raise UsageError(
                f"{s.shown} is not complete ({done}); finish it "
                "(re-run its task with --resume) or pass --allow-partial to merge the rows it has"
            )
    return ordered


def _layers(s: Shard) -> str:
    return ", ".join(f"{n} {'x'.join(map(str, shape))} {dtype}" for n, (shape, dtype) in s.layers.items()) or "none"
