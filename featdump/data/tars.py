"""WebDataset tar shards (docs/inputs.md): brace patterns, and samples streamed from a tar.

A shard is read once, front to back, with :mod:`tarfile` in stream mode (``r|*``); nothing is
unpacked and no member list is kept. Members are grouped into samples as ``webdataset`` groups them
(:func:`member_key`; consecutive members with one key are one sample); the image is the sample's
first member whose last extension is an image extension.
"""

from __future__ import annotations

import itertools
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

from braceexpand import braceexpand

from featdump.data.discover import IMAGE_EXTENSIONS
from featdump.data.remote import MAX_IMAGE_BYTES, RESUME_HINT, RemoteUnreachable, local_path, open_input, too_big
from featdump.errors import UsageError

TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta
_IMAGE_EXT = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_EXTENSIONS)


MAX_SHARDS = 1_000_000  # the most tar files one run may name (a brace pattern is expanded up to this)
_INT_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?\}")  # braceexpand's numeric range


def expand_shards(inputs: Sequence[str]) -> Iterator[tuple[int, str]]:
    """``(INPUT index, shard name)`` of every tar shard the INPUTs name, in order; a UsageError past
    :data:`MAX_SHARDS`, for a pattern before it is expanded (braceexpand lists each range whole)."""
    count = 0
    for k, raw in enumerate(inputs):
        bound = 1
        for a, b, step in _INT_RANGE.findall(raw):
            bound *= abs(int(b) - int(a)) // int(step or 1) + 1
        if bound > MAX_SHARDS:
            raise UsageError(f"{raw} names {bound} tar shards, more than {MAX_SHARDS}; give a smaller brace range")
        try:
            names = braceexpand(raw)
            first = next(names)  # braceexpand checks the braces as it starts
        except ValueError:  # braceexpand.UnbalancedBracesError
            raise UsageError(f"{raw}: unbalanced braces; a shard pattern looks like shards-{{000000..000099}}.tar") from None
        for name in itertools.chain([first], names):
            count += 1
            if count > MAX_SHARDS:
                raise UsageError(f"{raw} names more than {MAX_SHARDS} tar shards; give fewer (a smaller brace range)")
            yield k, name


_NUMBERED = re.compile(r"^(.*?)(\d+)(\.tar|\.tar\.gz|\.tgz)$", re.IGNORECASE)


def shard_pattern(names: Sequence[str]) -> str | None:
    """The brace pattern that ``braceexpand`` turns into exactly ``names`` (in numeric order),
    for numbered shards of one run (``data-000000.tar`` ... ``data-000004.tar`` ->
    ``data-{000000..000004}.tar``); the name itself for one; None when no pattern gives them."""
    if len(names) == 1:
        return names[0]
    parts = [_NUMBERED.match(n) for n in names]
    if not parts or any(m is None for m in parts):
        return None
    found = sorted((int(m.group(2)), m.group(2), m.group(1), m.group(3)) for m in parts if m is not None)
    if len({(head, ext) for _, _, head, ext in found}) != 1:
        return None
    (_, first, head, ext), (_, last, _, _) = found[0], found[-1]
    if int(last) - int(first) + 1 != len(found):  # a gap: no pattern, and no expanding a range of millions
        return None
    pattern = f"{head}{{{first}..{last}}}{ext}"
    return pattern if list(braceexpand(pattern)) == [f"{h}{d}{e}" for _, d, h, e in found] else None


def shards_hint(folder: str) -> str:
    """For a folder INPUT without images: how many tar shards it holds and how to give them (a
    brace pattern built from their names, else a shell glob per folder), or "" when it holds none."""
    from featdump.data.discover import folder_files
    from featdump.data.remote import is_url

    head = folder.rstrip("/") + "/"
    names = sorted(head + rel for rel, _ in folder_files(folder, is_tar_name))
    if not names:
        return ""
    pattern = shard_pattern(names)
    if pattern is not None:
        how = f"'{pattern}'"
    elif is_url(folder):  # no shell expands a URL: name them
        how = " ".join(f"'{n}'" for n in names[:3]) + (" ..." if len(names) > 3 else "")
    else:  # one shell glob per (folder, extension) of the shards, in order
        groups = list(dict.fromkeys((n.rsplit("/", 1)[0], next(e for e in TAR_EXTENSIONS if n.lower().endswith(e))) for n in names))
        how = " ".join(f"{where}/*{ext}" for where, ext in groups[:3]) + (" ..." if len(groups) > 3 else "")
    many = f"{len(names)} tar shards" if len(names) > 1 else "1 tar shard"
    return f"; it holds {many} (WebDataset): give them as INPUTs, e.g. {how}"


def glob_hint(name: str) -> str:
    """For a shard name that is a quoted shell glob: the brace pattern (or the shell) that gives
    the shards it matches; "" for any other name."""
    import glob

    if not glob.has_magic(name):
        return ""
    pattern = shard_pattern(sorted(glob.glob(name)))
    how = f"the brace pattern '{pattern}'" if pattern else "a brace pattern"
    return f"; a glob is not expanded: give {how}, or leave the glob unquoted for the shell"


@dataclass(frozen=True)
class TarSample:
    """One sample of a shard: its key, its image member (name and bytes), or why there is none."""

    key: str
    member: str  # the image member's name ("" when the sample has none)
    data: bytes | None
    error: str = ""  # set for a sample without an image, and for the record of a damaged shard
    offset: int = -1  # damaged shard: byte offset (of the tar stream) where reading stopped
    meta: dict[str, str] | None = None  # the text of the members kept (--keep), by extension


class _Damaged(Exception):
    """A header that is not a tar header, or the data ending without the end-of-archive blocks."""


HEADER_BYTES = 1 << 20  # the largest PAX or GNU long-name header read (tarfile reads one whole)
_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class _StrictInfo(tarfile.TarInfo):
    """``tarfile`` ends quietly at a bad header (after the first) or a short file, and reads a PAX header
    (or long name) whole whatever its size; here both are damage: the rest of the shard becomes a /failed record."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _HEADERS and self.size > HEADER_BYTES:
            raise _Damaged(f"a {self.size}-byte PAX or long-name header, over {HEADER_BYTES} bytes")
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]
            raise  # the end-of-archive blocks: a proper end
        except tarfile.EmptyHeaderError:  # type: ignore[attr-defined]
            raise _Damaged("the data ends without the tar's end-of-archive blocks") from None
        except tarfile.HeaderError as exc:
            raise _Damaged(f"bad tar header ({exc})") from None


_READ_ERRORS = (_Damaged, tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def member_key(info: tarfile.TarInfo) -> tuple[str | None, str]:
    """A member -> ``(sample key, extension)``; ``(None, "")`` for members that belong to no sample
    (folders, ``__meta__`` names, names webdataset skips). A link or special member keeps its sample:
    read_samples fails it rather than lose it."""
    name = info.name
    if info.isdir() or ("/" not in name and name.startswith("__") and name.endswith("__")) or _META.match(name):
        return None, ""
    m = _KEY.match(name)
    return (m.group(1), m.group(2).lower()) if m else (None, "")


def count_samples(shard: str) -> int | None:
    """Samples in a local, uncompressed shard, from its headers alone (``tarfile`` seeks over the
    data); None for a remote or compressed shard, or one that cannot be read (extract says why)."""
    path = local_path(shard)
    if path is None or not path.endswith(".tar"):
        return None
    keys = 0
    last: str | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                k, _ = member_key(info)
                if k is not None and k != last:
                    keys, last = keys + 1, k
                tar.members = []  # type: ignore[attr-defined]  # headers only; do not keep them
    except _READ_ERRORS:
        return None
    return keys


def read_samples(shard: str, keep: Sequence[str] = (), cap: int = MAX_IMAGE_BYTES) -> Iterator[TarSample]:
    """The samples of one shard in tar order, with the text of their ``keep`` members. A member over
    ``cap`` bytes is not read (its sample fails). Damage ends the stream with one ``TarSample`` whose
    ``offset`` is set; the sample being read then is part of that unreadable rest, as it is where a
    host answers but the body breaks off (or errs) after the retries. Opening errors (OSError) and a
    host that does not answer (:class:`RemoteUnreachable`) propagate."""
    key: str | None = None  # the sample being gathered
    member, data, start, error = "", None, 0, ""
    exts: list[str] = []
    texts: dict[str, str] = {}
    with open_input(shard) as fh:
        try:
            stream = tarfile.open(fileobj=fh, mode="r|*", tarinfo=_StrictInfo)  # noqa: SIM115 - a generator: closed with fh
            for info in stream:
                k, ext = member_key(info)
                if k is None:
                    continue
                name = info.name
                if k != key:
                    if key is not None:
                        yield _sample(key, member, data, exts, texts, error)
                    key, member, data, exts, start, texts, error = k, "", None, [], info.offset, {}, ""
                exts.append(ext)
                image = data is None and ext.rsplit(".", 1)[-1] in _IMAGE_EXT
                if image and not info.isreg():  # a hard link (GNU tar's duplicate files), symlink or device: not in the stream
                    kind = "hard link to " + info.linkname if info.islnk() else "symlink" if info.issym() else "special file"
                    error = error or f"member {name} is a {kind}, not a regular file; tar the image itself"
                    member = name
                elif not info.isreg():
                    continue
                elif (image or ext in keep) and info.size > cap:  # not read: tarfile skips its data in blocks
                    error = error or too_big(f"member {name} ({info.size} bytes)", cap)
                    member = name if image else member
                elif image and not error:
                    f = stream.extractfile(info)
                    data, member = (f.read() if f is not None else b""), name
                elif ext in keep and (f := stream.extractfile(info)) is not None:
                    texts[ext] = f.read().decode("utf-8", "replace")
                stream.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise
        except (*_READ_ERRORS, RemoteUnreachable) as exc:
            if isinstance(exc, RemoteUnreachable) and not exc.answered:
                raise  # the store stopped answering: the run stops there (--resume reads it again)
            at = start if key is not None else int(getattr(locals().get("stream"), "offset", 0))
            why = str(exc).removesuffix("; " + RESUME_HINT).replace("\n", " ").strip() or exc.__class__.__name__
            what = "" if isinstance(exc, RemoteUnreachable) else "truncated or corrupt tar: "  # the URL, the tries
            yield TarSample(key or "", "", None, f"rest of the shard unreadable from byte {at} ({what}{why})", at)
            return
        if key is not None:
            yield _sample(key, member, data, exts, texts, error)


def _sample(key: str, member: str, data: bytes | None, exts: list[str], texts: dict[str, str], error: str) -> TarSample:
    if error:
        return TarSample(key, member, None, error)
    if data is None:
        found = ", ".join("." + e for e in exts)
        return TarSample(key, "", None, f"sample {key!r} has no image member (found: {found})")
    return TarSample(key, member, data, meta=texts)
