"""The one place where input files (tar shards, tables) are opened and looked at.

Every source that reads an INPUT file goes through :func:`open_input`, :func:`stat_input` and
:func:`input_exists`, so remote storage plugs in here and nowhere else: a URL (``https://``,
``s3://``, ``gs://``, ``hf://``, ``file://``) is to be opened with ``fsspec`` (streamed, bounded
read-ahead, never fetched whole to disk), with a missing protocol package reported as a
:class:`~featdump.errors.UsageError` naming the extra (``featdump[s3]``, ...). Today only local
paths are implemented (plain ``open`` / ``os.stat``); a URL is refused with one line.
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO

from featdump.errors import UsageError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
    """True for ``scheme://...`` (an fsspec URL), False for a local path."""
    return bool(_URL.match(path))


def _no_remote(path: str) -> UsageError:
    return UsageError(f"{path}: remote INPUTs (URLs) are not supported by this featdump; give a local path")


def open_input(path: str) -> BinaryIO:
    """A binary file object reading ``path`` from its start (caller closes it).

    Raises ``FileNotFoundError``/``OSError`` as ``open`` does; the fsspec branch for URLs goes here.
    """
    if is_url(path):
        raise _no_remote(path)
    return open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it


def stat_input(path: str) -> int:
    """The size in bytes of the input file ``path`` (``FileNotFoundError`` when it does not exist)."""
    if is_url(path):
        raise _no_remote(path)
    return os.stat(path).st_size


def input_exists(path: str) -> bool:
    """Whether the input file ``path`` exists (a URL: whether the store answers "found")."""
    if is_url(path):
        raise _no_remote(path)
    return os.path.isfile(path)
