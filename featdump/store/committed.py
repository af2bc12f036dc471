"""Readers' view of a featdump file: as of its last commit, whatever a writer is doing now."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import weakref
from pathlib import Path
from typing import Any

from featdump.store.journal import JournaledFile
from featdump.store.locks import journal_path


def open_committed(path: str | Path) -> Any:
    """An ``h5py.File`` (read-only) of ``path`` as of its last commit, for readers (``show``, ``open``).

    Plain ``h5py.File(path)`` sees the same thing, except after a kill that fell inside a commit's
    apply step (microseconds): then the file is half-updated (HDF5 may fail, or loop) until the
    next writer replays the journal. This reads through the journal instead, changing nothing.
    While a run is writing (it holds the lock), the plain file is opened.
    """
    import h5py

    path = Path(path)
    jpath = journal_path(path)
    try:  # O_NONBLOCK: a FIFO where the journal would be must not hang a reader
        jfd = os.open(jpath, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return h5py.File(path, "r")
    try:
        if not stat.S_ISREG(os.fstat(jfd).st_mode):  # a folder or device there is no journal of ours
            raise IsADirectoryError(str(jpath))
        fcntl.flock(jfd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a writer holds LOCK_EX
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(jfd)
        return h5py.File(path, "r")
    view = _reader_view(path, fd, jfd)
    if view is None:
        os.close(fd)
        os.close(jfd)
        return h5py.File(path, "r")
    return h5py.File(view, "r")  # the view owns both descriptors (closed with it)


class _ReaderLock:
    """Stands in for an OutputLock in a read-only view: a shared lock on the journal."""

    def __init__(self, jfd: int) -> None:
        self.fd = jfd
        self.created = False

    def release(self, remove: bool) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _reader_view(path: Path, fd: int, jfd: int) -> JournaledFile | None:
    """A read-only view with the pending redo block overlaid, or None when there is none."""
    jf = JournaledFile(path, fd, _ReaderLock(jfd))  # type: ignore[arg-type]
    jf.load_journal()
    if jf.pending is None:
        return None
    view = jf.view()
    view.owner = jf  # type: ignore[attr-defined]  # keeps the descriptors' owner alive as long as h5py holds the view
    weakref.finalize(view, _close_fds, fd, jfd)
    return view


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
