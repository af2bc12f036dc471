"""Finding images: folders walked recursively, list files, image files; their order and digest.

The order is the row order of the output (docs/inputs.md): a folder's images sorted by stored path,
a list in its own order, INPUTs in the order given. With several INPUTs a folder's stored paths
start with the folder as written (``split/train/cat/1.jpg``), so equal layouts stay apart. Any
INPUT may be a URL (featdump/data/remote.py): a folder where the store can list, a list, an image.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from featdump.errors import UsageError
from featdump.text import storable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class ImageRef:
    """One input image: ``path`` is what gets stored, ``source`` is where to read it."""

    path: str
    source: str
    id: str | None = None  # the sample key or id column (tar shards, tables): stored in /ids
    data: bytes | None = None  # the image's bytes, when the input holds them (tar member, table cell)
    error: str = ""  # set when the input itself says there is no image (a /failed record)
    mark: tuple[int, int] | None = None  # streams: where --resume continues after this ref (data/sources.py)
    meta: dict[str, str] | None = field(default=None, compare=False)  # --keep/--keep-columns: /meta/<name>


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(root: Path, accept: Callable[[str], bool] = is_image_name) -> Iterable[tuple[str, str]]:
    """``(relative posix path, path)`` of the entries below ``root`` whose names ``accept`` takes.
    Hidden entries are skipped; a folder reached twice (symlink loop) is walked once. Non-regular
    files with an image name are yielded too, to become failure records instead of vanishing."""
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
            if accept(entry.name):
                yield (rel / entry.name).as_posix(), entry.path


def read_list_file(path: Path | str) -> list[ImageRef]:
    """Image paths, one per line (blank lines and ``#`` comments skipped; edge spaces kept only inside
    double quotes). Relative paths are read from the list's folder and stored as written."""
    from featdump.data.remote import is_url, open_input

    raw = str(path)
    try:
        with open_input(raw) as fh:
            text = fh.read().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{raw} is neither an image (by extension) nor a UTF-8 text list of image paths") from None
    except OSError as exc:
        raise UsageError(f"cannot read list file {raw}: {exc.strerror or exc}") from None
    folder = posixpath.dirname(raw) if is_url(raw) else os.path.dirname(raw)
    refs = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if len(entry) >= 2 and entry[0] == entry[-1] == '"':  # "  name with edge spaces.jpg  ": kept as written
            entry = entry[1:-1]
        if entry in seen:
            raise UsageError(f"list file {raw} names {entry!r} twice (lines {seen[entry]} and {number}); list each image once")
        seen[entry] = number
        source = entry if os.path.isabs(entry) or is_url(entry) else os.path.join(folder, entry)
        refs.append(ImageRef(entry, source))
    return refs


class NoImagesInFolder(UsageError):
    """A folder INPUT with no image in it (``folder``: as written); data/sources.py says what else
    it holds (tar shards) and how to pass that."""

    def __init__(self, folder: str) -> None:
        exts = " ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        super().__init__(f"no images in folder {folder} (looked recursively for: {exts})")
        self.folder = folder


def folder_files(raw: str, accept: Callable[[str], bool] = is_image_name) -> list[tuple[str, str]]:
    """``(relative path, where to read it)`` of the files below the folder ``raw`` (local or a URL the
    store lists) whose names ``accept`` takes, hidden ones skipped, in no particular order."""
    from featdump.data.remote import is_url, list_remote

    if is_url(raw):
        return [(rel, src) for rel, src in list_remote(raw) if accept(rel) and not _hidden(rel)]
    return list(_walk(Path(raw), accept))


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def discover(inputs: Sequence[str]) -> list[ImageRef]:
    """All images named by ``inputs`` (folders, list files, image files; local or URLs), in row order."""
    from featdump.data.remote import is_remote_dir, is_url, stat_input

    refs: list[ImageRef] = []
    origin: list[str] = []  # the INPUT each ref came from (for the duplicate message)
    folders: list[str] = []
    files: list[tuple[str, str]] = []  # (the INPUT that named it, source) for image files and list entries
    for raw in inputs:
        remote = is_url(raw)
        p = Path(raw)
        if is_remote_dir(raw) if remote else p.is_dir():
            found = folder_files(raw)
            if not found:
                raise NoImagesInFolder(raw)
            # sorted by stored path: relative to the folder, or (several INPUTs) starting with the folder as written
            head = raw.rstrip("/") + "/" if len(inputs) > 1 else ""
            new = sorted((ImageRef(storable(head + rel), src) for rel, src in found), key=lambda r: r.path)
            if not remote:
                folders.append(raw)
        elif not (remote or p.exists() or p.is_symlink()):
            raise UsageError(f"input not found: {raw}")
        else:  # an image file, or a list of them
            if remote:
                try:
                    stat_input(raw)
                except FileNotFoundError:
                    raise UsageError(f"input not found: {raw}") from None
                except IsADirectoryError:
                    raise UsageError(f"{raw}: a folder the store cannot list") from None
            elif not is_image_name(raw) and not p.is_file():
                raise UsageError(f"{raw} is not a folder, an image or a list file")
            new = [ImageRef(storable(raw), raw)] if is_image_name(raw) else read_list_file(raw)
            if not new:
                raise UsageError(f"list file {raw} names no images (one path per line expected)")
            files.extend((raw, r.source) for r in new if not is_url(r.source))
        refs.extend(new)
        origin.extend([raw] * len(new))
    if folders and len(inputs) > 1:
        _check_overlap(folders, files)
    _check_unique(refs, origin)
    return refs


def _check_unique(refs: Sequence[ImageRef], origin: Sequence[str]) -> None:
    """The same image twice (one stored path, or one local file spelled two ways: ``a.jpg``, ``./a.jpg``)
    is a usage error naming both sources."""
    from featdump.data.remote import is_url

    seen: dict[str, int] = {}
    for k, r in enumerate(refs):
        keys = (r.path, r.path if is_url(r.source) else os.path.normpath(os.path.abspath(r.source)))
        j = next((seen[key] for key in keys if key in seen), k)
        seen.update(dict.fromkeys(keys, k))
        if j != k:
            a, b = origin[j], origin[k]
            where = f"from {a}" if a == b else f"from {a} and from {b}"
            shown = repr(r.path) if refs[j].path == r.path else f"{refs[j].path!r} (also named {r.path!r})"
            raise UsageError(f"image path {shown} would be stored twice ({where}); each stored path must be unique")


def _inside(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` (both real paths) when it lies below it, else None."""
    rel = os.path.relpath(path, folder)
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel) else rel


def _check_overlap(folders: Sequence[str], files: Sequence[tuple[str, str]]) -> None:
    """A folder INPUT holding another folder INPUT, or an image also given or listed on its own, would
    store images twice under different paths. Decided on real paths (``./x``, symlinks alike), for
    what the walk would take only."""
    real = [(raw, os.path.realpath(raw)) for raw in folders]
    for (raw, rd), (other, ro) in itertools.combinations(real, 2):
        if _inside(ro, rd) or _inside(rd, ro):  # the same folder too: relpath "."
            inner, outer = (other, raw) if _inside(ro, rd) is not None else (raw, other)
            raise UsageError(
                f"folder {inner} is also inside folder {outer} (both given as INPUTs): its images "
                "would be stored twice; give one of them"
            )
    for given, source in files:
        rf = os.path.realpath(source)
        for raw, rd in real:
            rel = _inside(rf, rd)
            if rel is None or not is_image_name(rf) or _hidden(Path(rel).as_posix()):
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
