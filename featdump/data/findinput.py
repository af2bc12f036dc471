"""Where a stored image path can be read now: relative to the run's recorded INPUT folders (the
``inputs`` attribute), the current folder or the file's
folder. For ``viz`` (drawing the inputs) and ``verify`` (re-extracting files-family rows)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
    return _unique(roots + [Path.cwd(), h5_path.parent]), anchors


def _unique(roots: Sequence[Path]) -> list[Path]:
    unique: list[Path] = []
    for r in roots:
        if r.resolve() not in [u.resolve() for u in unique]:
            unique.append(r)
    return unique


def find_input(stored: str, roots: Sequence[Path], anchors: Sequence[Path] = ()) -> Path | None:
    """Where a stored image path can be read now, or None.

    ``anchors`` are the run's INPUTs as absolute paths: a stored path that starts with an INPUT
    as written (several INPUTs: ``split/train/cat/1.jpg``; image files: the path as given) is found
    under the absolute INPUT whose trailing parts it starts with.
    """
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


# --------------------------------------------------------------------------- numbers -> colours
