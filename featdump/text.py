"""Small text helpers shared by every package (no imports beyond the standard library)."""

from __future__ import annotations

import re
from typing import Any


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message; ``default`` (the class name when None) if it has none."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return exc.__class__.__name__ if default is None else default


ERROR_CHARS = 1000  # the longest error text stored in a file (/failed/errors)
LINE_CHARS = 2000  # the longest message printed as one line


def clip(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` cut after ``limit`` characters, with how much was left out: no error text, stored
    or printed, floods a file or a terminal (image bytes taken for a file name once made a 165 KB line)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def to_str(value: Any) -> str:
    """HDF5 strings (``bytes`` from h5py, or ``str``) -> ``str``; bytes that are not UTF-8 become U+FFFD."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of an OS name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any) -> str:
    """``text`` with control characters, bidi overrides and undecodable bytes escaped (``\\xHH``), so a
    file name cannot rewrite the terminal. JSON output stays exact."""
    return _UNPRINTABLE.sub(_escape, str(text))


def unsafe_name(name: str) -> str | None:
    """Why ``name`` (a layer or dataset name, which ``export`` makes a folder of) is not one safe path
    component: empty, ``.`` or ``..``, or holding ``/``, NUL or a control character; None when it is one."""
    if name in ("", ".", ".."):
        return "is empty, '.' or '..'"
    if "/" in name or _UNPRINTABLE.search(name):
        return "holds a path separator or a control character"
    return None


def storable(text: str) -> str:
    """``text`` storable as UTF-8: an OS name's undecodable bytes (``surrogateescape``) written as
    ``\\xHH``, any other lone surrogate as ``\\udXXX``; valid text unchanged."""
    if not _SURROGATE.search(text):  # what UTF-8 cannot encode
        return text
    if all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text):  # only escaped bytes
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fmt_bytes(n: float) -> str:
    """Binary units, labelled as such."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n / 1024:,.1f} KiB"
