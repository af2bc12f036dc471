"""Where a stored image path can be read now: relative to the run's recorded INPUT folders (the
``inputs`` attribute, or the recorded command of older files), the current folder or the file's
folder. For ``viz`` (drawing the inputs) and ``verify`` (re-extracting files-family rows)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


def roots_from_inputs(inputs: Sequence[str], h5_path: Path) -> list[Path]:
    """Folders where the stored (relative) paths may live, from the file's ``inputs`` attribute:
    INPUT folders, and the folders of list files and image files."""
    roots: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            roots.append(p)
        elif p.is_file():
            roots.append(p.parent)
    return _unique(roots + [Path.cwd(), h5_path.parent])


def input_roots(command: str, h5_path: Path) -> list[Path]:
    """For files written before the ``inputs`` attribute: INPUT folders (or list files' folders)
    named in the recorded command, tried as given and relative to the output file's folder."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    roots: list[Path] = []
    for word in words[1:]:
        word = word.strip("[]'\",()")  # also featdump.extract('m', ['photos/'], ...) as the API records it
        if not word or word.startswith("-"):
            continue
        for base in (Path.cwd(), h5_path.parent):
            p = Path(word) if Path(word).is_absolute() else base / word
            if p.is_dir():
                roots.append(p)
            elif p.is_file() and p.suffix.lower() in (".txt", ".lst", ".list", ".csv", ".tsv"):
                roots.append(p.parent)
    return _unique(roots + [Path.cwd(), h5_path.parent])


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
