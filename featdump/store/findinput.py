"""Where a stored row's image can be read now, for ``viz`` and ``verify``: :func:`locate_rows`.

Image files are looked up relative to the recorded INPUT folders, the current folder or the file's
folder; URLs, tar shards and tables are read again from their recorded inputs, never from a local
file that happens to have the stored name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from featdump.data.discover import ImageRef, discover
from featdump.data.lookup import Wanted, find_rows, wanted_rows
from featdump.errors import UsageError
from featdump.store.check import input_kind
from featdump.store.format import read_inputs_attr


def locate_rows(ff: Any, rows: Sequence[int], root: str | Path | None = None, cap: int | None = None) -> tuple[list[Wanted], str]:
    """Each of ``rows`` of ``ff`` with the references its image is read from (:attr:`Wanted.found`,
    empty when not found) and its :attr:`Wanted.tile`, and why a row is not found ("" when every one
    is); ``cap``: --max-image-bytes."""
    from featdump.data.remote import is_url
    from featdump.data.tiles import first_rows, image_starts
    from featdump.options import OPTIONS

    kind, inputs = input_kind(ff.meta), read_inputs_attr(ff.meta.get("inputs")) or []
    starts = image_starts(ff) if "tiles" in ff.h5 else None
    firsts = first_rows(rows, starts) if starts is not None else list(rows)
    if kind != "files":
        failed = [f for f, _ in ff.failed]
        paths, ids, at = ff.paths, ff.ids, list(rows)
        if starts is not None:  # a row is read from its image's sample: ranked among the images' first rows
            index = {s: i for i, s in enumerate(starts)}
            at = [index[f] for f in firsts]
            paths, ids = [paths[s] for s in starts], None if ids is None else [ids[s] for s in starts]
        wanted = wanted_rows(at, paths, ids, failed)
        for w, r, first in zip(wanted, rows, firsts, strict=True):
            w.row, w.tile = r, r - first
        if not inputs:
            return wanted, f"it does not record the {kind} inputs its rows were read from"
        columns = SimpleNamespace(**{o.name: o.from_attr(ff.meta) for o in OPTIONS if o.family == "table" and o.from_attr},
                                  max_image_bytes=cap)  # fmt: skip
        try:
            find_rows(kind, inputs, columns, wanted, ff.meta.get("shard") or (0, 1), names=[*ff.paths, *failed])
        except UsageError as exc:
            return wanted, str(exc)
        return wanted, ""
    roots, anchors = input_places(inputs, ff.path, root)
    listed: dict[str, str] | None = None  # the remote INPUTs' images: stored path -> URL
    wanted, why = [], ""
    for r, first in zip(rows, firsts, strict=True):
        stored, gone = ff.paths[r], ""
        if is_url(stored):
            where: str | None = stored
        elif any(is_url(i) for i in inputs) and not root:
            try:
                listed = {ref.path: ref.source for ref in discover(inputs)} if listed is None else listed
            except UsageError as exc:
                why, listed = why or str(exc), {}
            where = listed.get(stored)
            gone = f"input image {stored} is not in {', '.join(inputs[:3])} any more"
        else:
            found = find_input(stored, roots, anchors)
            where = str(found) if found else None
            gone = f"input image {stored} is gone (looked under {', '.join(str(p) for p in roots[:3])})"
        wanted.append(Wanted(r, stored, None, found=[ImageRef(stored, where)] if where else [], tile=r - first))
        why = why or ("" if where else gone)
    return wanted, why


def read_found(w: Wanted, max_pixels: int | None = None) -> Any:
    """The row's image (RGB) from its references: the one :meth:`Wanted.pick` takes among those that
    decode now (within ``max_pixels``: the run's ``--max-image-pixels``). Raises the first error (or
    ``FileNotFoundError``) when there is none."""
    from featdump.data.datasets import image_source
    from featdump.data.decode import load_rgb

    images, errors = [], []
    for ref in w.found:
        try:
            images.append(load_rgb(image_source(ref), max_pixels))
        except Exception as exc:  # noqa: BLE001 - which candidate decodes is the answer
            images.append(None)
            errors.append(exc)
    chosen = w.pick([im is not None for im in images])
    if chosen is None:
        raise errors[0] if errors else FileNotFoundError(w.path)
    return images[chosen]


def input_places(inputs: Sequence[str] | None, h5_path: Path, root: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """Where the stored (relative) paths of a file made from ``inputs`` (its ``inputs`` attribute)
    may live: ``root`` if given, the INPUT folders, the folders of list and image files, the current
    folder and the file's folder; and the absolute INPUTs as anchors for :func:`find_input`."""
    roots: list[Path] = [Path(root)] if root else []
    for item in inputs or ():
        p = Path(item)
        if p.is_dir():
            roots.append(p)
        elif p.is_file():
            roots.append(p.parent)
    anchors = [Path(i) for i in inputs or () if Path(i).is_absolute()]
    unique: dict[Path, Path] = {}  # the first of the names of one folder
    for r in [*roots, Path.cwd(), h5_path.parent]:
        unique.setdefault(r.resolve(), r)
    return list(unique.values()), anchors


def find_input(stored: str, roots: Sequence[Path], anchors: Sequence[Path] = ()) -> Path | None:
    """Where a stored image path can be read now, or None. ``anchors`` are the run's INPUTs as
    absolute paths: a stored path that starts with an INPUT as written is found under the one
    whose trailing parts it starts with."""
    p = Path(stored)
    if p.is_absolute():
        return p if p.is_file() else None
    for root in roots:
        candidate = root / p
        if candidate.is_file():
            return candidate
    parts = p.parts
    for anchor in anchors:
        for i in range(min(len(parts), len(anchor.parts)), 0, -1):
            if anchor.parts[-i:] == parts[:i]:
                candidate = anchor.joinpath(*parts[i:])
                if candidate.is_file():
                    return candidate
    return None
