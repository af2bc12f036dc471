"""A redo journal under HDF5, so that a run killed at any moment leaves its last commit intact.

HDF5 rewrites its metadata (superblock, object headers, B-tree nodes, heaps) in place and in no
crash-safe order: a process killed in the middle of ``H5Fflush`` can leave a file that cannot be
opened or extended (measured in featdump/store/journal-design.md). :class:`JournaledFile` is the file
object h5py's ``fileobj`` driver writes through:

* bytes past the last commit's size ``L`` (new chunks, new metadata) go straight to the file;
  the committed state never points at them, so a kill leaves only unreferenced bytes there;
* writes below ``L`` (in-place updates of committed metadata and partial chunks) are held in
  memory, page by page, and reads see them;
* :meth:`commit` writes those pages to ``OUT.h5-journal`` as one checksummed redo block, applies
  them to the file, then records the new size in the journal header. A kill before the block is
  complete leaves the old state; a kill after it is repaired by replaying the block (idempotent).

The journal file is also the lock: a writer holds ``flock(LOCK_EX)`` on it for its whole life,
so a second run on the same output fails at once with a clear message. The journal sits beside the
*real* file (symlinks resolved), so two names for one file (a symlink, a linked folder) share one
lock. With ``durable`` (the
default) every commit is ordered by fsync, so a power cut is survived the same way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import weakref
import zlib
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError, os_error

PAGE = 4096
JOURNAL_SUFFIX = "-journal"
_HEADER = struct.Struct("<8sQQQQI")  # magic, seq, committed size, st_dev, st_ino, crc
_HEADER_MAGIC = b"FDJRNL01"
_HEADER_SIZE = 64
_BLOCK = struct.Struct("<8sQqQQ")  # magic, seq, zero_from (-1: none), zero_to, final size
_BLOCK_MAGIC = b"FDREDO01"
_RECORD = struct.Struct("<QI")  # offset, length
_TRAILER = struct.Struct("<QI8s")  # number of records, crc32 of everything before, magic
_TRAILER_MAGIC = b"FDCOMMIT"
_NO_LOCK_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def journal_path(path: str | Path) -> Path:
    """``OUT.h5-journal`` beside the real file: symlinks in ``path`` are resolved, so every name that
    reaches one file (a symlink to it, a linked folder) finds the same journal, hence the same lock."""
    return Path(f"{os.path.realpath(path)}{JOURNAL_SUFFIX}")


_LOCKING_OFF = ("FALSE", "0", "NO", "OFF")
_LOCKING_ON = ("", "TRUE", "1", "YES", "ON", "BEST_EFFORT")


def locking_disabled() -> bool:
    """``HDF5_USE_FILE_LOCKING=FALSE`` (HDF5's own switch) turns our lock off as well; a value that
    is neither on nor off is a UsageError (a typo must not silently keep or drop the lock)."""
    raw = os.environ.get("HDF5_USE_FILE_LOCKING", "")
    value = raw.strip().upper()
    if value in _LOCKING_OFF:
        return True
    if value in _LOCKING_ON:
        return False
    raise UsageError(f"HDF5_USE_FILE_LOCKING={raw!r}: give TRUE or FALSE (or BEST_EFFORT)")


NO_LOCK_RISK = (
    "with it featdump cannot notice a second writer, and two runs writing one file corrupt it silently"
)


def file_kind(mode: int) -> str:
    """"a folder", "a character device", ... for messages about what is not a regular file."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "not a regular file"


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
    if locking_disabled():
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
    """Is there a journal of ``target`` that names this very file (its device and inode)? Then
    featdump made the file, even if it holds no commit yet. An empty file beside an empty journal
    counts too: a run killed between creating the file and writing the journal's first header
    (the lock file comes first, then the file, then the header)."""
    try:
        st = os.stat(target)
        fd = os.open(journal_path(target), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        jst = os.fstat(fd)
        if not stat.S_ISREG(jst.st_mode):
            return False
        raw = _pread_full(fd, _HEADER_SIZE, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    if jst.st_size == 0:
        return st.st_size == 0
    if len(raw) < _HEADER.size:
        return False
    magic, _seq, _size, dev, ino, crc = _HEADER.unpack_from(raw, 0)
    return magic == _HEADER_MAGIC and crc == zlib.crc32(raw[: _HEADER.size - 4]) and (dev, ino) == (st.st_dev, st.st_ino)


class OutputLock:
    """An exclusive ``flock`` on ``OUT.h5-journal``, held while a run writes (or replaces) OUT.h5."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = journal_path(target)
        self.fd = -1
        self.created = not self.path.exists()  # ours to remove again when we let go
        unlocked = locking_disabled()
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
                if exc.errno in _NO_LOCK_ERRNOS:
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
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def fsync_dir(path: Path) -> None:
    """fsync the folder holding ``path`` (makes a rename or a new file durable); best effort."""
    try:
        fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _pwrite_full(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _zero_fill(fd: int, start: int, stop: int) -> None:
    zeros = bytes(min(1 << 20, max(0, stop - start)))
    while start < stop:
        n = min(len(zeros), stop - start)
        _pwrite_full(fd, zeros[:n], start)
        start += n


class _Redo:
    """One commit as stored in the journal: zero a range, write pages, set the size."""

    def __init__(self, seq: int, zero: tuple[int, int] | None, size: int, pages: list[tuple[int, bytes]]) -> None:
        self.seq = seq
        self.zero = zero
        self.size = size
        self.pages = pages

    def encode(self) -> bytes:
        z0, z1 = self.zero if self.zero else (-1, 0)
        parts = [_BLOCK.pack(_BLOCK_MAGIC, self.seq, z0, z1, self.size)]
        for offset, data in self.pages:
            parts.append(_RECORD.pack(offset, len(data)))
            parts.append(data)
        body = b"".join(parts)
        return body + _TRAILER.pack(len(self.pages), zlib.crc32(body), _TRAILER_MAGIC)

    @classmethod
    def decode(cls, raw: bytes) -> _Redo | None:
        """The block at the start of ``raw``, or None when it is absent, torn or damaged."""
        if len(raw) < _BLOCK.size + _TRAILER.size:
            return None
        magic, seq, z0, z1, size = _BLOCK.unpack_from(raw, 0)
        if magic != _BLOCK_MAGIC:
            return None
        pos, pages = _BLOCK.size, []
        while True:
            if pos + _TRAILER.size <= len(raw):
                count, crc, tmagic = _TRAILER.unpack_from(raw, pos)
                if tmagic == _TRAILER_MAGIC and count == len(pages) and crc == zlib.crc32(raw[:pos]):
                    return cls(seq, (z0, z1) if z0 >= 0 else None, size, pages)
            if pos + _RECORD.size > len(raw):
                return None
            offset, length = _RECORD.unpack_from(raw, pos)
            pos += _RECORD.size
            if pos + length > len(raw):
                return None
            pages.append((offset, raw[pos : pos + length]))
            pos += length

    def apply(self, fd: int) -> None:
        """Idempotent: applying it again, or after a partial application, gives the same file."""
        if self.zero:
            _zero_fill(fd, *self.zero)
        for offset, data in self.pages:
            _pwrite_full(fd, data, offset)
        os.ftruncate(fd, self.size)


class JournaledFile:
    """The file object h5py writes through (``h5py.File(JournaledFile(...))``); see the module doc.

    Not thread-safe; h5py serialises its calls.
    """

    def __init__(self, path: str | Path, fd: int, lock: OutputLock, durable: bool = True) -> None:
        self.path = Path(path)
        self.fd = fd
        self.lock = lock
        self.jfd = lock.fd
        self.durable = durable
        self.readonly = False
        self.seq = 0
        self.committed = 0  # L: size of the file at the last commit
        self.size = 0  # logical size as HDF5 sees it
        self.pos = 0
        self.pages: dict[int, bytearray] = {}
        self.zero_from: int | None = None  # bytes in [zero_from, L) were cut by a truncate
        self.dirty = False
        self.error: OSError | None = None  # first I/O error, for a message that names its cause
        self._pending: _Redo | None = None  # a complete redo block not yet known to be applied
        self.failed = False  # an I/O error happened: nothing more is committed (see write)
        self.spill: dict[int, bytearray] = {}  # writes after a failure, held so HDF5 reads them back

    # ------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | Path, durable: bool = True) -> JournaledFile:
        """A new, empty file (exit 2 if it exists), locked, with a journal that says "nothing yet"."""
        path = Path(path)
        lock = OutputLock(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            lock.release(remove=False)
            raise UsageError(f"{path} exists; pass --resume to continue it or --overwrite to replace it") from None
        except OSError as exc:
            lock.release(remove=True)
            raise os_error(exc, path, "create") from None
        self = cls(path, fd, lock, durable)
        try:
            os.ftruncate(self.jfd, 0)  # a stale journal of a file deleted since must not replay here
            self._write_header()
            if durable:
                os.fsync(self.jfd)
                fsync_dir(path)
        except OSError as exc:
            self.abandon(remove=True)
            raise os_error(exc, path, "write") from None
        return self

    @classmethod
    def open(cls, path: str | Path, durable: bool = True) -> JournaledFile:
        """An existing file, locked, not yet recovered: call :meth:`view` or :meth:`recover` next."""
        path = Path(path)
        lock = OutputLock(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            lock.release(remove=False)
            raise UsageError(f"--resume: {path} does not exist") from None
        except OSError as exc:
            lock.release(remove=False)
            raise os_error(exc, path, "open") from None
        self = cls(path, fd, lock, durable)
        self.size = self.committed = os.fstat(fd).st_size
        header = self._read_header()
        if header is not None:
            seq, size, dev, ino = header
            st = os.fstat(fd)
            if (dev, ino) == (st.st_dev, st.st_ino):
                self.seq, self.committed = seq, size
                length = max(0, os.fstat(self.jfd).st_size - _HEADER_SIZE)
                redo = _Redo.decode(_pread_full(self.jfd, length, _HEADER_SIZE))
                if redo is not None and redo.seq == seq + 1:
                    self._pending = redo
        return self

    def view(self) -> JournaledFile:
        """Read-only: the file as of its last commit, without changing a byte on disk."""
        other = JournaledFile(self.path, self.fd, self.lock, self.durable)
        other.readonly = True
        other.committed = self.committed
        redo = self._pending
        if redo is not None:
            for offset, data in redo.pages:  # runs of whole pages (the last may be short)
                for k in range(0, len(data), PAGE):
                    other.pages[(offset + k) // PAGE] = bytearray(data[k : k + PAGE])
            if redo.zero:
                other.zero_from = redo.zero[0]
                other.committed = redo.zero[1]
            other.size = redo.size
        else:
            other.size = min(self.committed, os.fstat(self.fd).st_size)
        return other

    def recover(self) -> None:
        """Bring the file to its last commit: replay a complete redo block, or cut what follows L."""
        redo = self._pending
        try:
            if redo is not None:
                redo.apply(self.fd)
                self._sync(self.fd)
                self.seq, self.committed = redo.seq, redo.size
            else:
                actual = os.fstat(self.fd).st_size
                if actual < self.committed:
                    raise FeatdumpError(
                        f"{self.path} is shorter ({actual} bytes) than its last commit ({self.committed}); "
                        "it was truncated by something else and cannot be resumed - start again with --overwrite"
                    )
                if actual > self.committed:
                    os.ftruncate(self.fd, self.committed)
            self._write_header()
            self._sync(self.jfd)
        except OSError as exc:
            raise os_error(exc, self.path, "repair") from None
        self._pending = None
        self.size = self.committed

    # ------------------------------------------------------------ the h5py fileobj protocol

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.pos)
        n = left if n < 0 else min(n, left)
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        start, n = self.pos, len(view)
        self._read(view, start)
        if self.spill:
            self._patch(view, start, self.spill, start, start + n)
        self.pos = start + n
        return n

    def _read(self, view: memoryview, start: int) -> None:
        """The logical bytes at ``start``: the file, masked and overlaid by what is not yet committed."""
        n = len(view)
        stop = start + n
        try:
            got = os.preadv(self.fd, [view], start) if n else 0
        except OSError as exc:
            self._fail(exc)
            got = 0
        if got < n:
            view[got:] = bytes(n - got)
        if self.zero_from is not None:
            z0, z1 = max(start, self.zero_from), min(stop, self.committed)
            if z0 < z1:
                view[z0 - start : z1 - start] = bytes(z1 - z0)
        if self.pages and start < self.committed:
            self._patch(view, start, self.pages, start, min(stop, self.committed))
        if stop > self.size:  # past the logical end: zeros, as after ftruncate
            cut = max(start, self.size)
            view[cut - start :] = bytes(stop - cut)

    @staticmethod
    def _patch(view: memoryview, start: int, pages: dict[int, bytearray], lo: int, hi: int) -> None:
        if lo >= hi:
            return
        for p in range(lo // PAGE, (hi - 1) // PAGE + 1):
            page = pages.get(p)
            if page is None:
                continue
            p0 = p * PAGE
            a, b = max(lo, p0), min(hi, p0 + len(page))
            if a < b:
                view[a - start : b - start] = page[a - p0 : b - p0]

    def write(self, data: Any) -> int:
        """Never raises: h5py's fileobj driver does not survive a Python exception in a callback
        (it goes on calling with the exception set, and can crash). An I/O error puts the file in
        a failed state instead: later writes are held in memory so HDF5 reads back what it wrote,
        :meth:`commit` refuses, and the Store reports :attr:`error` (ENOSPC, EIO) to the user."""
        if self.readonly:
            self._fail(OSError(errno.EBADF, "write to a read-only view"))
            return len(memoryview(data).cast("B"))
        view = memoryview(data).cast("B")
        start, n = self.pos, len(view)
        stop = start + n
        if self.failed:
            self._spill_write(view, start)
            return n
        L = self.committed
        try:
            if stop > L:
                cut = max(start, L)
                _pwrite_full(self.fd, view[cut - start :], cut)
            if start < L:
                pos = start
                end = min(stop, L)
                while pos < end:
                    p = pos // PAGE
                    page = self._page(p)
                    p0 = p * PAGE
                    b = min(end, p0 + len(page))
                    page[pos - p0 : b - p0] = view[pos - start : b - start]
                    pos = b
        except OSError as exc:
            self._fail(exc)
            self._spill_write(view, start)
            return n
        self.pos = stop
        self.size = max(self.size, stop)
        self.dirty = True
        return n

    def _spill_write(self, view: memoryview, start: int) -> None:
        stop = start + len(view)
        pos = start
        while pos < stop:
            p = pos // PAGE
            page = self.spill.get(p)
            if page is None:
                page = bytearray(PAGE)
                self._read(memoryview(page), p * PAGE)
                self.spill[p] = page
            b = min(stop, (p + 1) * PAGE)
            page[pos - p * PAGE : b - p * PAGE] = view[pos - start : b - start]
            pos = b
        self.pos = stop
        self.size = max(self.size, stop)
        self.dirty = True

    def _fail(self, exc: OSError) -> None:
        self._remember(exc)
        self.failed = True

    def _page(self, p: int) -> bytearray:
        page = self.pages.get(p)
        if page is None:
            p0 = p * PAGE
            p1 = min(p0 + PAGE, self.committed)
            if self.zero_from is not None and p0 >= self.zero_from:
                page = bytearray(p1 - p0)
            else:
                page = bytearray(_pread_full(self.fd, p1 - p0, p0).ljust(p1 - p0, b"\0"))
                if self.zero_from is not None and self.zero_from < p1:
                    page[self.zero_from - p0 :] = bytes(p1 - self.zero_from)
            self.pages[p] = page
        return page

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.readonly:
            return size
        if self.failed:
            for p in [p for p in self.spill if p * PAGE >= size]:
                del self.spill[p]
            if size // PAGE in self.spill:
                page = self.spill[size // PAGE]
                page[size % PAGE :] = bytes(PAGE - size % PAGE)
            self.size = size
            self.dirty = True
            return size
        L = self.committed
        try:
            if size >= L:
                os.ftruncate(self.fd, size)
            else:
                self.zero_from = size if self.zero_from is None else min(self.zero_from, size)
                for p in [p for p in self.pages if p * PAGE >= size]:
                    del self.pages[p]
                p = size // PAGE
                if p in self.pages:
                    page = self.pages[p]
                    page[size - p * PAGE :] = bytes(len(page) - (size - p * PAGE))
                os.ftruncate(self.fd, L)  # what lay past L was never committed
        except OSError as exc:
            self._fail(exc)
        if size != self.size:
            self.dirty = True
        self.size = size
        return size

    def flush(self) -> None:
        """HDF5's flush: a no-op; :meth:`commit` decides when bytes become the committed state."""

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return not self.readonly

    # ------------------------------------------------------------ commit

    def commit(self) -> None:
        """Make everything written so far the new committed state, atomically (and durably)."""
        if self.failed:  # never commit a state built on writes that did not happen
            raise self.error or OSError(errno.EIO, "an earlier write failed")
        if self.readonly or not self.dirty:
            return
        size = self.size
        zero = None
        if self.zero_from is not None and self.zero_from < min(size, self.committed):
            zero = (self.zero_from, min(size, self.committed))
        pages: list[tuple[int, bytes]] = []  # runs of adjacent pages: one record, one pwrite each
        for p in sorted(self.pages):
            p0 = p * PAGE
            if p0 >= size:
                continue
            data = bytes(self.pages[p][: size - p0])
            if pages and pages[-1][0] + len(pages[-1][1]) == p0:
                pages[-1] = (pages[-1][0], pages[-1][1] + data)
            else:
                pages.append((p0, data))
        redo = _Redo(self.seq + 1, zero, size, pages)
        try:
            self._sync(self.fd)  # new chunks reach the disk before metadata that points at them
            block = redo.encode()
            _pwrite_full(self.jfd, block, _HEADER_SIZE)
            self._sync(self.jfd)  # the redo block is complete before the file changes
            self._pending = redo  # from here on, a failure leaves a block that --resume replays
            redo.apply(self.fd)
            self._sync(self.fd)
            self.seq, self.committed = redo.seq, size
            self._write_header()
            self._sync(self.jfd)  # before the next block may overwrite this one
        except OSError as exc:
            self._remember(exc)
            raise
        self._pending = None
        self.pages.clear()
        self.zero_from = None
        self.dirty = False

    def _sync(self, fd: int) -> None:
        if self.durable:
            os.fsync(fd)

    def _remember(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc

    def _write_header(self) -> None:
        st = os.fstat(self.fd)
        fields = (_HEADER_MAGIC, self.seq, self.committed, st.st_dev, st.st_ino)
        raw = struct.pack("<8sQQQQ", *fields)
        _pwrite_full(self.jfd, _HEADER.pack(*fields, zlib.crc32(raw)).ljust(_HEADER_SIZE, b"\0"), 0)

    def _read_header(self) -> tuple[int, int, int, int] | None:
        raw = _pread_full(self.jfd, _HEADER_SIZE, 0)
        if len(raw) < _HEADER.size:
            return None
        magic, seq, size, dev, ino, crc = _HEADER.unpack_from(raw, 0)
        if magic != _HEADER_MAGIC or crc != zlib.crc32(raw[: _HEADER.size - 4]):
            return None
        return seq, size, dev, ino

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """After a final :meth:`commit`: the file is whole, so the journal goes and the lock with it."""
        if self.fd < 0 or self.readonly:
            return
        clean = not self.dirty and self._pending is None
        os.close(self.fd)
        self.fd = -1
        self.lock.release(remove=clean)

    def release(self) -> None:
        """Let go without touching a byte (a refused --resume): the journal stays as it was
        (or, if there was none, the empty one made for the lock goes again)."""
        if self.fd < 0 or self.readonly:
            return
        os.close(self.fd)
        self.fd = -1
        self.lock.release(remove=self.lock.created)

    def abandon(self, remove: bool = False) -> None:
        """After a failure: drop what was not committed; ``remove`` deletes the file altogether.

        The disk already holds the last commit plus unreferenced bytes past it, which are cut off.
        A commit that failed half-way keeps its journal, so that --resume replays it.
        """
        if self.fd < 0 or self.readonly:
            return
        keep = False
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        elif self._pending is not None:
            keep = True
        else:
            try:
                if os.fstat(self.fd).st_size > self.committed:
                    os.ftruncate(self.fd, self.committed)
            except OSError:
                keep = True  # --resume cuts it instead
        self.pages.clear()
        self.spill.clear()
        self.dirty = False
        os.close(self.fd)
        self.fd = -1
        self.lock.release(remove=not keep)


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
    header = jf._read_header()
    if header is None:
        return None
    seq, size, dev, ino = header
    st = os.fstat(fd)
    if (dev, ino) != (st.st_dev, st.st_ino):
        return None
    length = max(0, os.fstat(jfd).st_size - _HEADER_SIZE)
    redo = _Redo.decode(_pread_full(jfd, length, _HEADER_SIZE))
    if redo is None or redo.seq != seq + 1:
        return None
    jf.committed, jf.seq, jf._pending = size, seq, redo
    view = jf.view()
    view.owner = jf  # keeps the descriptors' owner alive as long as h5py holds the view
    weakref.finalize(view, _close_fds, fd, jfd)
    return view


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
