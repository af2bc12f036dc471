"""Who may write an output: the journal's path beside the real file, the writer's lock on it, and
the checks that a path is (or is not) featdump's own."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from featdump.environment import FILE_LOCKING
from featdump.errors import FeatdumpError, UsageError, os_error
from featdump.store.redo import JOURNAL_SUFFIX, NO_LOCK_ERRNOS, read_header


def journal_path(path: str | Path) -> Path:
    """``OUT.h5-journal`` beside the real file: symlinks in ``path`` are resolved, so every name that
    reaches one file (a symlink to it, a linked folder) finds the same journal, hence the same lock."""
    return Path(f"{os.path.realpath(path)}{JOURNAL_SUFFIX}")


NO_LOCK_RISK = (
    "with it featdump cannot notice a second writer, and two runs writing one file corrupt it silently"
)


# the file type letter of ``ls -l`` (stat.filemode) -> what messages call it
_KINDS = {"d": "a folder", "c": "a character device", "b": "a block device", "p": "a FIFO (named pipe)",
          "s": "a socket", "l": "a symbolic link", "-": "a regular file"}  # fmt: skip


def file_kind(mode: int) -> str:
    """"a folder", "a character device", ... for messages about what is not a regular file."""
    return _KINDS[stat.filemode(mode)[0]]


def not_a_journal(path: Path, target: str | Path, mode: int) -> UsageError:
    return UsageError(
        f"{path} is {file_kind(mode)}, not featdump's journal; featdump keeps the journal of {target} "
        "there: move it out of the way"
    )


def busy(target: str | Path, jpath: str | Path) -> FeatdumpError:
    """The one wording of "another run writes this file"."""
    return FeatdumpError(
        f"{target} is being written by another featdump run (it holds the lock on {jpath}); "
        "wait for it to finish, or write to another -o"
    )


def writer_active(target: str | Path) -> bool:
    """Does a featdump run hold the lock of ``target`` now? (Takes nothing: for an early refusal.)"""
    if not FILE_LOCKING.value():
        return False
    try:
        fd = os.open(journal_path(target), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # drops our shared lock, if we got it
    return False


def journal_names(target: str | Path) -> bool:
    """Is there a journal of ``target`` that names this very file (device and inode)? Then featdump
    made it, even with no commit yet. An empty file beside an empty journal counts too (a run killed
    before the journal's first header: the lock file comes first, then the file, then the header)."""
    try:
        st = os.stat(target)
        fd = os.open(journal_path(target), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        jst = os.fstat(fd)
        if not stat.S_ISREG(jst.st_mode):
            return False
        header = read_header(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    if jst.st_size == 0:
        return st.st_size == 0
    return header is not None and header[2:] == (st.st_dev, st.st_ino)


class OutputLock:
    """An exclusive ``flock`` on ``OUT.h5-journal``, held while a run writes (or replaces) OUT.h5."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = journal_path(target)
        self.fd = -1
        self.created = not self.path.exists()  # ours to remove again when we let go
        unlocked = not FILE_LOCKING.value()
        while True:
            try:  # O_NONBLOCK: a FIFO put where the journal goes must not hang us
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
            except IsADirectoryError:
                raise not_a_journal(self.path, self.target, stat.S_IFDIR) from None
            except OSError as exc:
                raise os_error(exc, self.path, "create") from None
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):  # never truncate or write a device, FIFO or socket
                os.close(fd)
                raise not_a_journal(self.path, self.target, mode)
            if unlocked:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise busy(self.target, self.path) from None
                if exc.errno in NO_LOCK_ERRNOS:
                    raise FeatdumpError(
                        f"cannot lock {self.path}: this file system does not support locks ({exc.strerror}; "
                        "NFS without lockd, Lustre without -o flock); make sure only one run writes "
                        f"{self.target}, then set HDF5_USE_FILE_LOCKING=FALSE ({NO_LOCK_RISK})"
                    ) from None
                raise os_error(exc, self.path, "lock") from None
            # The holder before us may have unlinked the file between our open and our flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd

    def release(self, remove: bool) -> None:
        if self.fd < 0:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def fsync_dir(path: Path) -> None:
    """fsync the folder holding ``path`` (makes a rename or a new file durable); best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
