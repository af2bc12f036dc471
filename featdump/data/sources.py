"""The source seam: INPUT arguments -> this shard's ordered image references.

A source knows its family's order and how a family splits among shards; the job only asks for
:meth:`Source.select`. Files (folders, text lists, image files) are today's family; tar shards and
tables are further ``Source`` implementations chosen by :func:`open_source`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from featdump.data.discover import ImageRef, discover, list_digest
from featdump.run.placement import shard_bounds


@dataclass(frozen=True)
class Selection:
    """One shard's part of the inputs, in order, and the digests that guard resume and merge."""

    refs: Sequence[ImageRef]  # this shard's images, in the order rows are written
    digest: str  # of ``refs``: ``--resume`` continues only the same list
    total: int  # images in the whole input list (all shards)
    total_digest: str  # of the whole list: ``merge`` checks the shards agree


class Source(Protocol):
    def select(self, index: int, count: int) -> Selection:
        """Block ``index`` of ``count`` (0-based); ``select(0, 1)`` is everything."""
        ...


class FileSource:
    """Folders (recursive), text lists and image files: one list sorted by stored path, split into
    contiguous blocks of near-equal size."""

    def __init__(self, inputs: Sequence[str]) -> None:
        self.refs = discover(inputs)

    def select(self, index: int, count: int) -> Selection:
        start, stop = shard_bounds(len(self.refs), index, count)
        mine = self.refs[start:stop]
        return Selection(mine, list_digest(mine), len(self.refs), list_digest(self.refs))


def open_source(inputs: Sequence[str]) -> Source:
    """The source for ``inputs`` (raises UsageError for inputs no source reads)."""
    return FileSource(inputs)
