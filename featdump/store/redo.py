"""The redo journal's on-disk format: the header, one checksummed redo block per commit, and the
low-level whole-buffer reads and writes (featdump/store/journal-design.md)."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from typing import Any

PAGE = 4096
JOURNAL_SUFFIX = "-journal"
HEADER = struct.Struct("<8sQQQQI")  # magic, seq, committed size, st_dev, st_ino, crc
HEADER_MAGIC = b"FDJRNL01"
HEADER_SIZE = 64
BLOCK = struct.Struct("<8sQqQQ")  # magic, seq, zero_from (-1: none), zero_to, final size
BLOCK_MAGIC = b"FDREDO01"
RECORD = struct.Struct("<QI")  # offset, length
TRAILER = struct.Struct("<QI8s")  # number of records, crc32 of everything before, magic
TRAILER_MAGIC = b"FDCOMMIT"
NO_LOCK_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def pread_full(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def read_header(fd: int) -> tuple[int, int, int, int] | None:
    """``(seq, committed size, st_dev, st_ino)`` from a journal's header; None for none or a torn one."""
    raw = pread_full(fd, HEADER_SIZE, 0)
    if len(raw) < HEADER.size:
        return None
    magic, seq, size, dev, ino, crc = HEADER.unpack_from(raw, 0)
    if magic != HEADER_MAGIC or crc != zlib.crc32(raw[: HEADER.size - 4]):
        return None
    return seq, size, dev, ino


def write_header(fd: int, seq: int, size: int, st: os.stat_result) -> None:
    """The header :func:`read_header` reads back: ``seq``, the committed ``size``, the file's identity ``st``."""
    raw = HEADER.pack(HEADER_MAGIC, seq, size, st.st_dev, st.st_ino, 0)[: HEADER.size - 4]
    pwrite_full(fd, (raw + struct.pack("<I", zlib.crc32(raw))).ljust(HEADER_SIZE, b"\0"), 0)


def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        import ctypes
        import ctypes.util

        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SFR = _sync_file_range()
_SFR_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writing the range back, do not wait


def start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing ``[offset, offset+size)`` to disk now, without waiting, so a
    later ``fsync`` finds most pages already written. Best effort (a no-op off Linux)."""
    if _SFR is not None and size > 0:
        _SFR(fd, offset, size, _SFR_WRITE)


def pwrite_full(fd: int, data: Any, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class Redo:
    """One commit as stored in the journal: zero a range, write pages, set the size."""

    def __init__(self, seq: int, zero: tuple[int, int] | None, size: int, pages: list[tuple[int, bytes]]) -> None:
        self.seq = seq
        self.zero = zero
        self.size = size
        self.pages = pages

    def encode(self) -> bytes:
        z0, z1 = self.zero if self.zero else (-1, 0)
        parts = [BLOCK.pack(BLOCK_MAGIC, self.seq, z0, z1, self.size)]
        for offset, data in self.pages:
            parts += (RECORD.pack(offset, len(data)), data)
        body = b"".join(parts)
        return body + TRAILER.pack(len(self.pages), zlib.crc32(body), TRAILER_MAGIC)

    @classmethod
    def decode(cls, raw: bytes) -> Redo | None:
        """The block at the start of ``raw``, or None when it is absent, torn or damaged."""
        if len(raw) < BLOCK.size + TRAILER.size:
            return None
        magic, seq, z0, z1, size = BLOCK.unpack_from(raw, 0)
        if magic != BLOCK_MAGIC:
            return None
        pos, pages = BLOCK.size, list[tuple[int, bytes]]()
        while True:
            if pos + TRAILER.size <= len(raw):
                count, crc, tmagic = TRAILER.unpack_from(raw, pos)
                if tmagic == TRAILER_MAGIC and count == len(pages) and crc == zlib.crc32(raw[:pos]):
                    return cls(seq, (z0, z1) if z0 >= 0 else None, size, pages)
            if pos + RECORD.size > len(raw):
                return None
            offset, length = RECORD.unpack_from(raw, pos)
            pos += RECORD.size
            if pos + length > len(raw):
                return None
            pages.append((offset, raw[pos : pos + length]))
            pos += length

    def apply(self, fd: int) -> None:
        """Idempotent: applying it again, or after a partial application, gives the same file."""
        start, stop = self.zero or (0, 0)
        zeros = bytes(min(1 << 20, max(0, stop - start)))
        for at in range(start, stop, max(1, len(zeros))):
            pwrite_full(fd, zeros[: stop - at], at)
        for offset, data in self.pages:
            pwrite_full(fd, data, offset)
        os.ftruncate(fd, self.size)
