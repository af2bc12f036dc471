"""A redo journal under HDF5, so that a run killed at any moment leaves its last commit intact.

HDF5 rewrites its metadata in place in no crash-safe order (featdump/store/journal-design.md).
:class:`JournaledFile` is the file object h5py's ``fileobj`` driver writes through:

* bytes past the last commit's size ``L`` go straight to the file (the committed state never points at them);
* writes below ``L`` are held in memory, page by page, and reads see them;
* :meth:`commit` writes those pages to ``OUT.h5-journal`` as one checksummed redo block, applies
  them, then records the new size in the journal header: a kill before the block is complete leaves
  the old state, a kill after it is repaired by replaying the block (idempotent).

The journal file is also the writer's lock (:mod:`featdump.store.locks`). With ``durable`` (the
default) every commit is ordered by fsync, so a power cut is survived the same way.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError, os_error
from featdump.store.locks import OutputLock, fsync_dir
from featdump.store.redo import (
    HEADER_SIZE,
    PAGE,
    Redo,
    pread_full,
    pwrite_full,
    read_header,
    start_writeback,
    write_header,
)

# New bytes past the last commit are handed to the kernel for writeback every this many bytes, so
# the disk works while the run goes on and a commit's fsync waits for little (durable files only).
WRITEBACK_BYTES = 32 << 20


class JournaledFile:
    """The file object h5py writes through (``h5py.File(JournaledFile(...))``; see the module doc).
    Not thread-safe; h5py serialises its calls."""

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
        self.pending: Redo | None = None  # a complete redo block not yet known to be applied
        self.failed = False  # an I/O error happened: nothing more is committed (see write)
        self.spill: dict[int, bytearray] = {}  # writes after a failure, held so HDF5 reads them back
        self._unsynced: tuple[int, int] | None = None  # [lo, hi) written past L, writeback not started

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
        self.load_journal()
        return self

    def load_journal(self) -> None:
        """From a journal whose header names this file: the last commit, and a complete redo block
        not yet known to be applied (:attr:`pending`)."""
        header = read_header(self.jfd)
        st = os.fstat(self.fd)
        if header is not None and header[2:] == (st.st_dev, st.st_ino):
            self.seq, self.committed = header[:2]
            length = max(0, os.fstat(self.jfd).st_size - HEADER_SIZE)
            redo = Redo.decode(pread_full(self.jfd, length, HEADER_SIZE))
            if redo is not None and redo.seq == self.seq + 1:
                self.pending = redo

    def view(self) -> JournaledFile:
        """Read-only: the file as of its last commit, without changing a byte on disk."""
        other = JournaledFile(self.path, self.fd, self.lock, self.durable)
        other.readonly = True
        other.committed = self.committed
        redo = self.pending
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
        redo = self.pending
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
        self.pending = None
        self.size = self.committed

    # ------------------------------------------------------------ the h5py fileobj protocol

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.pos)
        buf = bytearray(left if n < 0 else min(n, left))
        self.readinto(buf)
        return bytes(buf)

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
        L = self.committed
        if not self.failed:
            try:
                if stop > L:
                    cut = max(start, L)
                    pwrite_full(self.fd, view[cut - start :], cut)
                    self._written(cut, stop)
                if start < L:
                    self._copy(view, start, min(stop, L), lambda p: self._held(self.pages, p, min(PAGE, L - p * PAGE)))
            except OSError as exc:
                self._fail(exc)
        if self.failed:  # held in memory from now on
            self._copy(view, start, stop, lambda p: self._held(self.spill, p, PAGE))
        self.pos = stop
        self.size = max(self.size, stop)
        self.dirty = True
        return n

    def _written(self, lo: int, hi: int) -> None:
        """Start writeback of new bytes once enough have gathered (see WRITEBACK_BYTES)."""
        if not self.durable:
            return
        if self._unsynced is not None:
            lo, hi = min(lo, self._unsynced[0]), max(hi, self._unsynced[1])
        if hi - lo >= WRITEBACK_BYTES:
            start_writeback(self.fd, lo, hi - lo)
            self._unsynced = None
        else:
            self._unsynced = (lo, hi)

    @staticmethod
    def _copy(view: memoryview, start: int, stop: int, page_of: Callable[[int], bytearray]) -> None:
        """The bytes of ``view`` (written at ``start``) below ``stop`` into the pages ``page_of`` gives."""
        pos = start
        while pos < stop:
            page, p0 = page_of(pos // PAGE), pos // PAGE * PAGE
            b = min(stop, p0 + len(page))
            page[pos - p0 : b - p0] = view[pos - start : b - start]
            pos = b

    def _held(self, pages: dict[int, bytearray], p: int, size: int) -> bytearray:
        """Page ``p`` of ``pages`` (writes below L, or held after a failure), first filled with the
        ``size`` bytes reads see there now."""
        if p not in pages:
            page = bytearray(size)
            self._read(memoryview(page), p * PAGE)
            pages[p] = page
        return pages[p]

    def _fail(self, exc: OSError) -> None:
        self._remember(exc)
        self.failed = True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = offset + (0, self.pos, self.size)[whence]  # SEEK_SET, SEEK_CUR, SEEK_END
        return self.pos

    def tell(self) -> int:
        return self.pos

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.readonly:
            return size
        if self.failed:
            self._cut(self.spill, size)
            self.size = size
            self.dirty = True
            return size
        L = self.committed
        try:
            if size >= L:
                os.ftruncate(self.fd, size)
            else:
                self.zero_from = size if self.zero_from is None else min(self.zero_from, size)
                self._cut(self.pages, size)
                os.ftruncate(self.fd, L)  # what lay past L was never committed
        except OSError as exc:
            self._fail(exc)
        if size != self.size:
            self.dirty = True
        self.size = size
        return size

    @staticmethod
    def _cut(pages: dict[int, bytearray], size: int) -> None:
        """Drop the pages past ``size`` and zero the tail of the one it falls in."""
        for p in [p for p in pages if p * PAGE >= size]:
            del pages[p]
        if (page := pages.get(size // PAGE)) is not None:
            page[size % PAGE :] = bytes(len(page) - size % PAGE)

    def flush(self) -> None:
        """HDF5's flush: a no-op; :meth:`commit` decides when bytes become the committed state."""

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
        redo = Redo(self.seq + 1, zero, size, pages)
        try:
            self._sync(self.fd)  # new chunks reach the disk before metadata that points at them
            block = redo.encode()
            pwrite_full(self.jfd, block, HEADER_SIZE)
            self._sync(self.jfd)  # the redo block is complete before the file changes
            self.pending = redo  # from here on, a failure leaves a block that --resume replays
            redo.apply(self.fd)
            self._sync(self.fd)
            self.seq, self.committed = redo.seq, size
            self._write_header()
            self._sync(self.jfd)  # before the next block may overwrite this one
        except OSError as exc:
            self._remember(exc)
            raise
        self.pending = None
        self._unsynced = None
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
        write_header(self.jfd, self.seq, self.committed, os.fstat(self.fd))

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """After a final :meth:`commit`: the file is whole, so the journal goes and the lock with it."""
        self._close(remove=not self.dirty and self.pending is None)

    def release(self) -> None:
        """Let go without touching a byte (a refused --resume): the journal stays as it was
        (or, if there was none, the empty one made for the lock goes again)."""
        self._close(remove=self.lock.created)

    def abandon(self, remove: bool = False) -> None:
        """After a failure: cut the unreferenced bytes past the last commit (``remove``: delete the
        file). A commit that failed half-way keeps its journal, so that --resume replays it."""
        if self.fd < 0 or self.readonly:
            return
        keep = not remove and self.pending is not None
        if remove:
            self.path.unlink(missing_ok=True)
        elif not keep:
            try:
                if os.fstat(self.fd).st_size > self.committed:
                    os.ftruncate(self.fd, self.committed)
            except OSError:
                keep = True  # --resume cuts it instead
        self.pages.clear()
        self.spill.clear()
        self.dirty = False
        self._close(remove=not keep)

    def _close(self, remove: bool) -> None:
        if self.fd >= 0 and not self.readonly:  # a view's descriptors are its owner's
            os.close(self.fd)
            self.fd = -1
            self.lock.release(remove=remove)
