"""Readers' view of a featdump file: as of its last commit, whatever a writer is doing now."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from featdump.store.journal import JournaledFile
from featdump.store.locks import journal_path


def open_committed(path: str | Path) -> Any:
    """An ``h5py.File`` (read-only) of ``path`` as of its last commit, read through the journal.

    Plain ``h5py.File(path)`` differs only after a kill inside a commit's apply step, which leaves
    the file half-updated until the next writer replays the journal. While a run holds the lock,
    the plain file is opened."""
    import h5py

    view = _reader_view(Path(path))
    return h5py.File(path if view is None else view, "r")  # a view owns its descriptors (closed with it)


def _reader_view(path: Path) -> JournaledFile | None:
    """A read-only view with the pending redo block overlaid; None when there is none, or while a
    writer holds the lock."""
    fds: list[int] = []
    with contextlib.suppress(OSError):  # O_NONBLOCK: a FIFO where the journal would be must not hang a reader
        fds.append(os.open(journal_path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        if stat.S_ISREG(os.fstat(fds[0]).st_mode):  # a folder or device there is no journal of ours
            fcntl.flock(fds[0], fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a writer holds LOCK_EX
            fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            jf = JournaledFile(path, fds[1], SimpleNamespace(fd=fds[0]))  # type: ignore[arg-type]  # the shared lock's
            jf.load_journal()
            if jf.pending is not None:
                view = jf.view()
                view.owner = jf  # type: ignore[attr-defined]  # keeps the descriptors' owner alive as long as h5py holds the view
                weakref.finalize(view, _close_fds, *fds)
                return view
    _close_fds(*fds)
    return None


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
