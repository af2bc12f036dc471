"""The source seam: INPUT arguments -> this shard's image references, in row order.

The job asks :meth:`Source.select` for its block and streams the :class:`Selection` from where
``--resume`` continues. Three families (docs/inputs.md), never mixed in one run: files (one
materialised list, split into blocks of images), WebDataset tar shards (split into blocks of whole
tar files; samples streamed, never listed ahead) and one table (blocks of rows, streamed in batches).

Every ref a stream yields is one position: ``inputs_done`` counts positions, so a source-level
failure (a sample without an image, the damaged rest of a tar) is a position too. Tar refs carry a
``mark`` (shard index in this block, positions done in it) that the store commits, so ``--resume``
skips finished shards without opening them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

from featdump.data.discover import ImageRef, discover, list_digest
from featdump.data.remote import MAX_IMAGE_BYTES, identity, is_url, stat_input, stat_inputs
from featdump.errors import FeatdumpError, UsageError
from featdump.options import OPTIONS


def shard_bounds(num_items: int, index: int, count: int) -> tuple[int, int]:
    """Half-open range ``[start, stop)`` of block ``index`` of ``count`` contiguous blocks that cover
    ``range(num_items)`` once; the first ``num_items % count`` blocks get one item more."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is not 0 <= I < N")
    if num_items < 0:
        raise ValueError("num_items must be >= 0")
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


class Selection:
    """One shard's part of the inputs, and the digests that guard resume and merge. ``size``: what
    ``num_inputs`` records (images, rows or tar files); ``length``: positions :meth:`stream` yields,
    None until read (tar shards)."""

    kind = "files"
    has_ids = False

    def __init__(self, digest: str, total: int, total_digest: str, size: int, length: int | None) -> None:
        self.digest = digest  # of this block: ``--resume`` continues only the same inputs
        self.total = total  # units (images / rows / tar files) in the whole input (all shards)
        self.total_digest = total_digest  # of the whole input: ``merge`` checks the shards agree
        self.size = size
        self.length = length

    def stream(self, done: int = 0, mark: Sequence[int] | None = None) -> Iterator[ImageRef]:
        """The refs from position ``done`` on (``mark``: the committed tar mark, if any)."""
        raise NotImplementedError

    def estimated_length(self) -> tuple[int, str] | None:
        """``(positions, how)`` where :attr:`length` is unknown but can be estimated cheaply; else None."""
        return None


class ListSelection(Selection):
    """Files: a materialised list (in row order, docs/inputs.md)."""

    def __init__(self, refs: Sequence[ImageRef], total_refs: Sequence[ImageRef]) -> None:
        super().__init__(list_digest(refs), len(total_refs), list_digest(total_refs), len(refs), len(refs))
        self.refs = refs

    def stream(self, done: int = 0, mark: Sequence[int] | None = None) -> Iterator[ImageRef]:
        return itertools.islice(self.refs, done, None)


class Source(Protocol):
    def select(self, index: int, count: int) -> Selection:
        """Block ``index`` of ``count`` (0-based); ``select(0, 1)`` is everything."""
        ...


class FileSource:
    """Folders (recursive), text lists and image files: one list in row order (INPUTs as given, a
    folder sorted by stored path, a list in its own order), split into contiguous blocks of near-equal size."""

    def __init__(self, inputs: Sequence[str]) -> None:
        from featdump.data.discover import NoImagesInFolder
        from featdump.data.tars import shards_hint

        try:
            self.refs = discover(inputs)
        except NoImagesInFolder as exc:  # a folder of tar shards: say how to give them
            raise UsageError(f"{exc}{shards_hint(exc.folder)}") from None

    def select(self, index: int, count: int) -> Selection:
        start, stop = shard_bounds(len(self.refs), index, count)
        return ListSelection(self.refs[start:stop], self.refs)


# --------------------------------------------------------------------------- tar shards


LOOKUP_CHUNK = 1024  # tar shards looked up at a time


def _digest(items: Any) -> str:
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8", "surrogateescape")).hexdigest()


class TarSelection(Selection):
    kind = "tar"
    has_ids = True

    def __init__(self, shards: list[tuple[str, int]], everything: list[tuple[str, int]], keep: Sequence[str], cap: int) -> None:
        # --resume continues only in the same files: their identity (size, time, head; data/remote.py)
        tags = stat_inputs([name for name, _ in shards], identity)
        for (name, _), tag in zip(shards, tags, strict=True):
            if isinstance(tag, OSError):
                raise UsageError(f"cannot read tar shard {name}: {tag.strerror or tag}")
        super().__init__(_digest([shards, tags]), len(everything), _digest(everything), len(shards), None)
        self.shards, self.keep, self.cap = shards, keep, cap

    def estimated_length(self) -> tuple[int, str] | None:
        """The first shard's samples (counted from its headers, when it is a local plain tar) scaled
        by the bytes of all the shards in this block."""
        from featdump.data.tars import count_samples

        if not self.shards:
            return None
        first, first_size = self.shards[0]
        count = count_samples(first)
        if not count or first_size <= 0:
            return None
        total_bytes = sum(size for _, size in self.shards)
        estimate = max(count, round(count * total_bytes / first_size))
        return estimate, f"{count} samples in {first}, scaled by the bytes of {len(self.shards)} shard(s)"

    def stream(self, done: int = 0, mark: Sequence[int] | None = None) -> Iterator[ImageRef]:
        from featdump.data.tars import read_samples

        first, skip = (int(mark[0]), int(mark[1])) if mark else (0, done)
        for k, (name, _) in enumerate(self.shards[first:], first):
            try:
                samples = read_samples(name, self.keep, self.cap)
                pending: ImageRef | None = None
                for j, s in enumerate(samples):
                    if k == first and j < skip:
                        continue
                    if pending is not None:
                        yield pending
                    pending = _tar_ref(name, s, (k, j + 1))
                if pending is not None:
                    yield replace(pending, mark=(k + 1, 0))
            except OSError as exc:
                raise FeatdumpError(
                    f"cannot read tar shard {name}: {exc.strerror or exc}; rerun with --resume to continue"
                ) from None


def _tar_ref(shard: str, s: Any, mark: tuple[int, int]) -> ImageRef:
    if s.offset >= 0:  # the unreadable rest of a damaged shard
        return ImageRef(f"{shard}@{s.offset}", "", "", None, s.error, mark)
    return ImageRef(f"{shard}/{s.member or s.key}", "", s.key, s.data, s.error, mark, s.meta)


class TarSource:
    """WebDataset shards in the order given, split into blocks of whole tar files. Missing or repeated
    shards are a UsageError before any model loads; names are looked up :data:`LOOKUP_CHUNK` at a
    time, so ``x-{0..99999999}.tar`` stops at its first missing shard."""

    def __init__(self, inputs: Sequence[str], keep: Sequence[str] = (), cap: int = MAX_IMAGE_BYTES) -> None:
        from featdump.data.tars import expand_shards, glob_hint

        self.keep, self.cap = keep, cap  # keep: members stored in /meta/<ext>
        self.shards: list[tuple[str, int]] = []
        seen: dict[str, tuple[int, str]] = {}  # shard -> (INPUT index, name as expanded) of its first mention
        named = expand_shards(inputs)
        while chunk := list(itertools.islice(named, LOOKUP_CHUNK)):
            for k, name in chunk:
                # a shard named twice (a local one by its real path: a.tar is ./a.tar) would store its samples twice
                key = name if is_url(name) else os.path.realpath(name)
                if key in seen:
                    j, first = seen[key]
                    by = f"by the pattern {inputs[k]}" if j == k else f"by the INPUTs {inputs[j]} and {inputs[k]}"
                    also = f" (the second time as {name})" if name != first else ""
                    raise UsageError(
                        f"tar shard {first} is named twice, {by}{also}: its samples would be stored twice; "
                        "name each shard once"
                    )
                seen[key] = (k, name)
            for (k, name), size in zip(chunk, stat_inputs([name for _, name in chunk]), strict=True):
                if isinstance(size, FileNotFoundError):
                    where = f" (from the pattern {inputs[k]})" if name != inputs[k] else ""
                    raise UsageError(f"tar shard not found: {name}{where}{glob_hint(name)}")
                if isinstance(size, OSError):
                    raise UsageError(f"cannot read tar shard {name}: {size.strerror or size}")
                self.shards.append((name, size))

    def select(self, index: int, count: int) -> Selection:
        start, stop = shard_bounds(len(self.shards), index, count)
        return TarSelection(self.shards[start:stop], self.shards, self.keep, self.cap)


# --------------------------------------------------------------------------- tables


class TableSelection(Selection):
    kind = "table"

    def __init__(self, table: Any, start: int, stop: int, size: int, tag: str) -> None:
        what = [table.path, size, table.path_column, table.image_column, table.id_column]
        # --resume continues only in the same table: its identity (size, time, head; data/remote.py)
        super().__init__(_digest([*what, start, stop, tag]), table.rows, _digest([*what, table.rows]), stop - start, stop - start)
        self.table, self.start, self.stop = table, start, stop
        self.has_ids = bool(table.id_column)

    def stream(self, done: int = 0, mark: Sequence[int] | None = None) -> Iterator[ImageRef]:
        return self.table.refs(self.start + done, self.stop)


class TableSource:
    """One table: rows in table order, split into contiguous blocks of rows."""

    def __init__(
        self, path: str, path_column: str | None, image_column: str | None, id_column: str | None,
        keep_columns: Sequence[str] | None, cap: int,
    ) -> None:  # fmt: skip
        from featdump.data.tables import Table

        try:
            self.size, self.tag = stat_input(path), identity(path)
        except FileNotFoundError:
            raise UsageError(f"input not found: {path}") from None
        except OSError as exc:
            raise UsageError(f"cannot read table {path}: {exc.strerror or exc}") from None
        self.table = Table(path, path_column, image_column, id_column, keep_columns, cap)

    def select(self, index: int, count: int) -> Selection:
        start, stop = shard_bounds(self.table.rows, index, count)
        return TableSelection(self.table, start, stop, self.size, self.tag)


# --------------------------------------------------------------------------- choosing


def family(raw: str) -> str:
    """``files``, ``tar`` or ``table``, from the INPUT's name (a folder is always files)."""
    from featdump.data.tables import is_table_name
    from featdump.data.tars import is_tar_name

    if os.path.isdir(raw):
        return "files"
    return "tar" if is_tar_name(raw) else "table" if is_table_name(raw) else "files"


_FAMILY_WORDS = {"files": "image files/folders/lists", "tar": "tar shards", "table": "a table"}


def open_source(inputs: Sequence[str], options: Any = None) -> Source:
    """The source for ``inputs`` (raises UsageError for inputs no source reads, or mixed families).
    ``options``: the job's config, for the table columns (``path_column``, ``image_column``, ``id_column``)."""
    kinds = [family(str(raw)) for raw in inputs]
    if len(set(kinds)) > 1:
        b, kind_b = next((raw, k) for raw, k in zip(inputs, kinds, strict=True) if k != kinds[0])
        raise UsageError(
            f"INPUTs mix kinds: {inputs[0]} is {_FAMILY_WORDS[kinds[0]]}, {b} is "
            f"{_FAMILY_WORDS[kind_b]}; one run reads image files/folders/lists, tar shards, or one table"
        )
    kind = kinds[0] if kinds else "files"
    columns = {o.name: getattr(options, o.name, None) for o in OPTIONS if o.family == "table"}  # the table's own options
    if kind != "table":
        given = next(("--" + name.replace("_", "-") for name, value in columns.items() if value), None)
        if given:
            raise UsageError(f"{given} applies to a table INPUT (.csv, .tsv, .parquet, .jsonl), not to {inputs[0]}")
    keep = getattr(options, "keep", None) or ()
    if keep and kind != "tar":
        raise UsageError(f"--keep applies to WebDataset tar shards (.tar, .tar.gz, .tgz), not to {inputs[0]}; for a table use --keep-columns")
    cap = getattr(options, "max_image_bytes", None) or MAX_IMAGE_BYTES
    if kind == "tar":
        return TarSource(inputs, keep, cap)
    if kind == "table":
        if len(inputs) != 1:
            shown = ", ".join(inputs[:3]) + (", ..." if len(inputs) > 3 else "")
            raise UsageError(f"one table per run: got {len(inputs)} ({shown})")
        return TableSource(str(inputs[0]), **columns, cap=cap)
    return FileSource(inputs)
