"""Stored rows found again in the inputs a file records (``featdump verify``, ``viz``): tar shards, tables.

The inputs are read again with the sources ``extract`` used (``open_source(...).select(I, N).stream()``),
so the references handed back are the ones the run decoded.

**How a row is matched.** A row's key is its stored path (and its id when the file has ``/ids``). Row
``r``, the ``j``-th row with its key (:attr:`Wanted.rank`), is the ``j``-th sample with that key the
inputs yield; samples the source reports as failed are never rows and are not counted. Rows keep the
inputs' order, so this is exact even where a key repeats; a table row's number is never used, as
failed images before it would shift it. Only a sample that failed to *decode* (in ``/failed``, not in
the rows) can break the count: when ``/failed`` holds the path ``f`` times (:attr:`Wanted.spare`),
the candidates are the key's first ``j + f + 1`` samples and the row is the ``j``-th that decodes;
the caller decodes them and picks (:meth:`Wanted.pick`).

**Tar shards**: a stored path starts with the shard as written, matched to the recorded shard whose
trailing parts it names best (:func:`_written_as`); only shards holding sampled rows are opened, and
read only up to their last sampled member. **Tables** are read once, in order, until every sampled
row is found; a merged file's tables follow one another.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import Any

from featdump.data.discover import ImageRef
from featdump.data.remote import is_url
from featdump.data.sources import open_source, shard_bounds
from featdump.data.tars import TAR_EXTENSIONS, expand_shards
from featdump.errors import UsageError
from featdump.text import storable

Key = tuple[str, str | None]


@dataclass
class Wanted:
    """One sampled row and the references found for it (see the module doc, "How a row is matched")."""

    row: int  # in the file
    path: str  # stored
    id: str | None  # stored; None when the file has no /ids
    rank: int = 0  # rows before this one with the same key
    spare: int = 0  # /failed records with this path: 0 means the match is exact
    found: list[ImageRef] = field(default_factory=list)  # the candidates, in input order
    error: str = ""  # why a sample with its key cannot be read now (over --max-image-bytes, ...)
    tile: int = 0  # --tiles: the row's tile in its image (the row less its image's first row)

    @property
    def done(self) -> bool:
        return len(self.found) >= (self.rank + self.spare + 1 if self.spare else 1)

    @property
    def enough(self) -> bool:
        """Found as many of the key's samples as the row needs at the least."""
        return len(self.found) >= (self.rank + 1 if self.spare else 1)

    def offer(self, occurrence: int, ref: ImageRef) -> None:
        """The ``occurrence``-th sample (from 0) with this row's key."""
        if self.done:
            return
        if occurrence == self.rank or (self.spare and occurrence <= self.rank + self.spare):
            self.found.append(ImageRef(self.path, ref.source, ref.id, ref.data))

    def pick(self, decoded: Sequence[bool]) -> int | None:
        """Which of :attr:`found` is the row, given whether each one decoded now; None when too few do."""
        ok = [i for i, good in enumerate(decoded) if good]
        if not self.spare:
            return 0 if ok[:1] == [0] else None
        return ok[self.rank] if len(ok) > self.rank else None


def wanted_rows(rows: Sequence[int], paths: Sequence[str], ids: Sequence[str] | None, failed: Iterable[str]) -> list[Wanted]:
    """The sampled ``rows`` of a file with ``paths`` (and ``ids``) and failed paths ``failed``, ranked."""

    def key(r: int) -> Key:
        return (paths[r], ids[r] if ids is not None else None)

    keys = {key(r) for r in rows}
    names = {k[0] for k in keys}
    seen: Counter[Key] = Counter()
    ranks: dict[int, int] = {}
    todo = set(rows)
    for r in range(max(rows, default=-1) + 1):
        if paths[r] not in names or (k := key(r)) not in keys:  # the name first: no id read for most rows
            continue
        if r in todo:
            ranks[r] = seen[k]
        seen[k] += 1
    spare = Counter(p for p in failed if p in names)
    return [Wanted(r, paths[r], key(r)[1], ranks[r], spare[paths[r]]) for r in rows]


def find_rows(kind: str, inputs: Sequence[str], options: Any, wanted: Sequence[Wanted], shard: Sequence[int],
              names: Iterable[str] = ()) -> None:  # fmt: skip
    """Fill each :attr:`Wanted.found` from the recorded ``inputs`` of a ``kind`` (tar | table) file
    that is block ``shard`` = ``(I, N)`` of its run (``options``: the table columns, ``max_image_bytes``);
    ``names``: every stored path of the file (rows and failures), for the shard names as written.
    UsageError naming the shard, table or URL that is gone, or the row an input no longer holds."""
    if kind == "tar":
        _find_in_tars(inputs, wanted, shard, names, getattr(options, "max_image_bytes", None))
    elif kind == "table":
        _find_in_tables(inputs, options, wanted, shard)
    else:
        raise UsageError(f"rows of {kind!r} inputs cannot be found again")


# --------------------------------------------------------------------------- reading


def _select(inputs: Sequence[str], options: Any, shard: tuple[int, int], what: str) -> Any:
    """The source ``extract`` reads ``inputs`` with, block ``shard``; a missing input says ``what`` it held."""
    try:
        return open_source(inputs, options).select(*shard)
    except UsageError as exc:
        raise UsageError(f"{exc} ({what})") from None


def _scan(stream: Iterator[ImageRef], rows: Sequence[tuple[Key, Wanted]], seen: Counter[Key], cut: int = 0) -> None:
    """Offer each sample of ``stream`` to the ``(key, row)`` rows with its key, until every one of them is
    done; ``cut``: characters of a sample's path before the stored part (a tar shard's recorded name and ``/``)."""
    by_key: dict[Key, list[Wanted]] = {}
    for key, w in rows:
        by_key.setdefault(key, []).append(w)
    ids = any(w.id is not None for _, w in rows)
    try:
        for ref in stream:
            k = (storable(ref.path[cut:]), ref.id if ids else None)
            offered = by_key.get(k)
            if ref.error:  # reported by the source itself: never a row; said when its row is not found
                rest = cut and ref.path[cut - 1] == "@"  # a tar shard's unreadable rest: every row not found yet
                for w in (w for _, w in rows) if rest else offered or ():
                    w.error = w.error or ref.error
                continue
            if offered is None:
                continue
            for w in offered:
                w.offer(seen[k], ref)
            seen[k] += 1
            if all(w.done for _, w in rows):
                return
    finally:
        if hasattr(stream, "close"):
            stream.close()  # a tar shard is closed here, unread past its last sampled member


def _find_in_tables(inputs: Sequence[str], options: Any, wanted: Sequence[Wanted], shard: Sequence[int]) -> None:
    seen: Counter[Key] = Counter()
    block = (int(shard[0]), int(shard[1])) if len(inputs) == 1 else (0, 1)  # several: a merge of whole runs
    for table in inputs:
        selection = _select([table], options, block, "the table the rows were read from")
        _scan(selection.stream(), [((w.path, w.id), w) for w in wanted], seen)
        if all(w.done for w in wanted):
            return
    for w in wanted:
        if not w.enough:
            what = f"{w.path} (id {w.id})" if w.id is not None else w.path
            raise UsageError(f"row {w.row}'s image {what} is not in the table {', '.join(inputs)} any more")


def _find_in_tars(inputs: Sequence[str], wanted: Sequence[Wanted], shard: Sequence[int], names: Iterable[str],
                  cap: int | None = None) -> None:  # fmt: skip
    every = list(dict.fromkeys(name for _, name in expand_shards(inputs)))
    start, stop = shard_bounds(len(every), int(shard[0]), int(shard[1]))
    shards = every[start:stop]
    written = shard_names(names) | shard_names(w.path for w in wanted)
    recorded = _written_as(shards, written)
    places: dict[str, list[tuple[Wanted, str]]] = {}  # recorded shard -> (row, member)
    for w in wanted:
        hits = [(s, member) for name, member in split_shard(w.path) for s in recorded.get(name, [])]
        if not hits:
            more = ", ..." if len(inputs) > 3 else ""
            raise UsageError(f"row {w.row} ({w.path}) names no tar shard of its inputs ({', '.join(inputs[:3])}{more})")
        for s, member in hits:
            places.setdefault(s, []).append((w, member))
    for s in shards:  # in the run's order; only those holding sampled rows are opened
        todo = [(w, member) for w, member in places.get(s, []) if not w.done]
        if not todo:
            continue
        held = f"it holds row {todo[0][0].row}, {todo[0][0].path}"
        selection = _select([s], SimpleNamespace(max_image_bytes=cap), (0, 1), held)
        keyed = [((member, w.id), w) for w, member in todo]
        _scan(selection.stream(), keyed, Counter(), cut=len(s) + 1)  # its paths: the recorded shard, "/", member
    for s, rows in places.items():
        for w, member in rows:
            if not w.enough:
                why = f"is not in the tar shard {s} any more"
                why = f"in the tar shard {s} cannot be read now: {w.error}" if w.error else why
                raise UsageError(f"row {w.row}'s image {member} {why}")


# --------------------------------------------------------------------------- shard names


# a tar name's end, then "/" (a member) or "@" (the offset of a damaged shard's rest)
_SHARD_END = re.compile("(?:" + "|".join(map(re.escape, sorted(TAR_EXTENSIONS, key=len, reverse=True))) + ")(?=[/@])", re.I)


def split_shard(stored: str) -> list[tuple[str, str]]:
    """``SHARD/MEMBER`` (or ``SHARD@OFFSET``, a failure) -> every ``(SHARD, rest)`` it may be, the
    shortest shard first: each ``/`` or ``@`` that follows a tar name."""
    return [(stored[: m.end()], stored[m.end() + 1 :]) for m in _SHARD_END.finditer(stored)]


def shard_names(stored: Iterable[str]) -> set[str]:
    """Every shard name as written in ``stored`` paths (rows in shard order: a run of rows of one
    shard costs a prefix test each)."""
    names: set[str] = set()
    last = None
    for s in stored:
        if last is not None and s.startswith(last):
            continue
        found = split_shard(s)
        names.update(name for name, _ in found)
        last = found[0][0] + "/" if found else None
    return names


def _match(written: str, recorded: str) -> int:
    """How well a shard name as written names a recorded shard: 0 not at all; else the number of
    trailing path parts they share (a URL or an absolute path: all of them, and more than any relative name)."""
    if is_url(written) or is_url(recorded):
        return 1 << 16 if written == recorded else 0
    if os.path.isabs(written):
        return 1 << 16 if os.path.normpath(written) == os.path.normpath(recorded) else 0
    parts = [p for p in PurePosixPath(os.path.normpath(written)).parts if p not in ("..", ".")]
    have = PurePosixPath(recorded).parts
    if not parts or len(parts) > len(have) or list(have[-len(parts) :]) != parts:
        return 0
    return len(parts)


def _written_as(shards: Sequence[str], written: Iterable[str]) -> dict[str, list[str]]:
    """Shard name as written -> the recorded shards it names: each recorded shard goes to the
    written names that match it best (``a.tar`` and ``sub/a.tar`` written in one folder name two shards)."""
    names = sorted(set(written))
    out: dict[str, list[str]] = {}
    for s in shards:
        scores = [(_match(name, s), name) for name in names]
        best = max((score for score, _ in scores), default=0)
        if best:
            for score, name in scores:
                if score == best:
                    out.setdefault(name, []).append(s)
    return out
