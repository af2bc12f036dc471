"""Finding images: folders walked recursively, list files, image files; their order and digest.

The order is the row order of the output (SPEC, Inputs): a folder's images sorted by stored path,
a list in its own order, INPUTs in the order given.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from featdump.errors import UsageError
from featdump.text import storable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv", ".tsv")


@dataclass(frozen=True)
class ImageRef:
    """One input image: ``path`` is what gets stored, ``source`` is where to read it."""

    path: str
    source: str
    id: str | None = None  # the sample key or id column (tar shards, tables): stored in /ids
    data: bytes | None = None  # the image's bytes, when the input holds them (tar member, table cell)
    error: str = ""  # set when the input itself says there is no image (a /failed record)
    mark: tuple[int, int] | None = None  # streams: where --resume continues after this ref (data/sources.py)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root: Path) -> Iterable[tuple[str, str]]:
    """Yield ``(relative posix path, absolute path)`` of image-named entries below ``root``.

    Hidden files and folders are skipped; symlinked folders are followed once (a loop is cut at
    the first folder seen twice). Non-regular files with an image name are yielded too, so that
    they are recorded as failures instead of vanishing.
    """
    seen: set[tuple[int, int]] = set()
    stack = [(root, PurePath())]
    while stack:
        folder, rel = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            if rel == PurePath():
                raise
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append((Path(entry.path), rel / entry.name))
                if is_image_name(entry.name):
                    yield (rel / entry.name).as_posix(), entry.path
            elif is_image_name(entry.name):
                yield (rel / entry.name).as_posix(), entry.path


def read_list_file(path: Path) -> list[ImageRef]:
    """Image paths, one per line; blank lines and ``#`` comments skipped; spaces around a line are
    dropped unless the name is in double quotes (``"  a.jpg "``: the quotes go, the spaces stay).

    Relative paths are read relative to the list file's folder and stored as written. A name listed
    twice is a UsageError naming both lines.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is neither an image (by extension) nor a UTF-8 text list of image paths") from None
    except OSError as exc:
        raise UsageError(f"cannot read list file {path}: {exc.strerror or exc}") from None
    refs = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if len(entry) >= 2 and entry[0] == entry[-1] == '"':  # "  name with edge spaces.jpg  ": kept as written
            entry = entry[1:-1]
        if entry in seen:
            raise UsageError(f"list file {path} names {entry!r} twice (lines {seen[entry]} and {number}); list each image once")
        seen[entry] = number
        source = entry if os.path.isabs(entry) else str(path.parent / entry)
        refs.append(ImageRef(entry, source))
    return refs


def discover(inputs: Sequence[str]) -> list[ImageRef]:
    """All images named by ``inputs`` (folders, list files, image files), sorted by stored path."""
    refs: list[ImageRef] = []
    folders: list[str] = []
    files: list[tuple[str, str]] = []  # (the INPUT that named it, source) for image files and list entries
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = [ImageRef(storable(rel), src) for rel, src in _walk(p)]
            if not found:
                exts = " ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
                raise UsageError(f"no images in folder {raw} (looked recursively for: {exts})")
            refs.extend(found)
            folders.append(raw)
        elif p.exists() or p.is_symlink():
            if is_image_name(p.name):
                refs.append(ImageRef(storable(raw), raw))
                files.append((raw, raw))
            elif p.is_file():
                listed = read_list_file(p)
                if not listed:
                    raise UsageError(f"list file {raw} names no images (one path per line expected)")
                refs.extend(listed)
                files.extend((raw, r.source) for r in listed)
            else:
                raise UsageError(f"{raw} is not a folder, an image or a list file")
        else:
            raise UsageError(f"input not found: {raw}")
    if folders and len(inputs) > 1:
        _check_overlap(folders, files)
    refs.sort(key=lambda r: r.path)
    dupes = sorted({a.path for a, b in zip(refs, refs[1:]) if a.path == b.path})
    if dupes:
        raise UsageError(
            f"{len(dupes)} image path(s) would be stored twice (e.g. {dupes[0]!r}); "
            + (
                "give the common parent folder instead of several folders with the same layout"
                if len(folders) > 1
                else "the INPUTs (list files, image files) name it twice; give each image once"
            )
        )
    return refs


def _inside(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` (both real paths) when it lies below it, else None."""
    rel = os.path.relpath(path, folder)
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel) else rel


def _check_overlap(folders: Sequence[str], files: Sequence[tuple[str, str]]) -> None:
    """A folder INPUT that also holds another folder INPUT, or an image given (or listed) on its
    own, would store those images twice under different paths: a usage error naming them. Decided
    on resolved real paths, so ``./x``, ``../here/x`` and symlinks are caught alike; only what the
    walk would take counts (no hidden parts, an image extension)."""
    real = [(raw, os.path.realpath(raw)) for raw in folders]
    for k, (raw, rd) in enumerate(real):
        for other, ro in real[k + 1 :]:
            if ro == rd or _inside(ro, rd) or _inside(rd, ro):
                inner, outer = (other, raw) if _inside(ro, rd) is not None else (raw, other)
                raise UsageError(
                    f"folder {inner} is also inside folder {outer} (both given as INPUTs): its images "
                    "would be stored twice; give one of them"
                )
    for given, source in files:
        rf = os.path.realpath(source)
        for raw, rd in real:
            rel = _inside(rf, rd)
            if rel is None or not is_image_name(rf) or any(part.startswith(".") for part in Path(rel).parts):
                continue
            named = source if given == source else f"{source} (listed in {given})"
            raise UsageError(
                f"{named} is also in folder {raw} (both given as INPUTs): it would be stored twice; "
                "give the folder or the file, not both"
            )


def list_digest(refs: Sequence[ImageRef]) -> str:
    """sha256 of the stored paths in order: two runs over the same input list agree on it."""
    h = hashlib.sha256()
    for r in refs:
        h.update(r.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()
