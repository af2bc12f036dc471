"""Small text helpers shared by every package (no imports beyond the standard library)."""

from __future__ import annotations

from typing import Any


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message; ``default`` (the class name when None) if it has none."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return exc.__class__.__name__ if default is None else default


def to_str(value: Any) -> str:
    """HDF5 strings (``bytes`` from h5py, or ``str``) -> ``str``; bytes that are not UTF-8 become U+FFFD."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
