"""The file format's shared pieces (docs/file-format.md): attribute encoding, chunk shapes,
compression filters, and attributes that more than one module writes or reads."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from featdump.environment import ZSTD_LEVEL
from featdump.errors import UsageError
from featdump.options import SAME
from featdump.text import storable, to_str

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def inputs_attr(inputs: Sequence[str | os.PathLike[str]]) -> str:
    """The ``inputs`` root attribute: the INPUTs as given, a JSON list of strings; local paths made
    absolute (readers such as ``viz`` find the images from any folder), URLs as written."""
    texts = [os.fspath(item) for item in inputs]
    return json.dumps([t if _URL.match(t) else os.path.abspath(t) for t in texts], ensure_ascii=False)


def read_inputs_attr(value: Any) -> list[str] | None:
    """The list written by :func:`inputs_attr`, or None when the file has none or it is not such a list."""
    try:
        items = json.loads(to_str(value)) if isinstance(value, (str, bytes)) else None
    except ValueError:
        return None
    return items if isinstance(items, list) and all(isinstance(i, str) for i in items) else None


def read_text(value: Any) -> str:
    """A stored string (``/paths``, ``/failed/*``) as ``str``: bytes that are not UTF-8 (a hand-made
    or foreign file) read as ``\\xHH``, the way featdump stores undecodable names (docs/safety.md)."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


FEATURES = "features"
CELLS = "cells"  # /cells/<name>: (N, 3) start, h, w of each row of a ragged layer
RAGGED_VERSION = 2  # the format_version of files holding a ragged layer (fixed files keep FORMAT_VERSION)


def extent(h5: Any, name: str, n: int) -> int:
    """How many rows of ``/features/<name>`` the first ``n`` images of an open file fill: ``n``, or
    for a ragged layer their cells (from ``/cells/<name>``)."""
    if name not in h5.get(CELLS, ()):
        return n
    start, h, w = (int(v) for v in h5[CELLS][name][n - 1]) if n else (0, 0, 0)
    return start + h * w


CHUNK_TARGET = 1 << 20  # bytes: h5py's guidance is 10 KiB - 1 MiB per chunk
CHUNK_MIN = 64 << 10


def load_codecs() -> None:
    """Register hdf5plugin's filters (Zstandard, Blosc2, ...) with HDF5, so that files written with
    ``--compression zstd`` can be read. Cheap after the first call."""
    import hdf5plugin  # noqa: F401


def with_margin(nbytes: int) -> int:
    """Room a file of ``nbytes`` feature bytes needs: 2% and 1 MiB more (HDF5 metadata, the redo
    journal, /paths). The space check of ``extract`` and ``merge --copy`` both use it."""
    return nbytes + int(nbytes * 0.02) + (1 << 20)


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes the file system of ``folder`` lets this user write."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def chunk_shape(shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
    """Chunks of ~64 KiB-1 MiB holding whole images where possible, so one image reads fast;
    pooled vectors pack several rows per chunk, large maps split along channels (whole H x W planes)."""
    per_image = itemsize * math.prod(shape)
    if per_image <= CHUNK_TARGET:
        rows = max(1, min(1024, CHUNK_MIN // max(1, per_image)))
        return (rows, *shape)
    if len(shape) >= 2:
        # The most channels (a divisor of C, so no chunk is part padding) whose planes fit.
        plane = per_image // shape[0]
        fits = max(1, CHUNK_TARGET // max(1, plane))
        channels = max(d for d in range(1, min(shape[0], fits) + 1) if shape[0] % d == 0)
        if channels * 4 <= min(shape[0], fits):  # C has no useful divisor (a prime): pad instead
            channels = min(shape[0], fits)
        return (1, channels, *shape[1:])
    return (1, max(1, CHUNK_TARGET // itemsize))


ZSTD_FILTER = 32015  # HDF5's registered Zstandard filter (hdf5plugin.Zstd)


def compression_kwargs(name: str, dtype: str) -> dict[str, Any]:
    """h5py filter arguments for ``--compression``, chosen by measurement (docs/performance.md).
    ``zstd`` is HDF5's registered filter 32015 (readers need ``import hdf5plugin``, whatever the
    level); gzip and lzf keep shuffle, which helps them."""
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "zstd":
        import hdf5plugin  # noqa: F401 - registers the filter with HDF5

        # the filter reads its level as a C int from an unsigned cd_value: negative levels wrap
        return {"compression": ZSTD_FILTER, "compression_opts": (ZSTD_LEVEL.value() % (1 << 32),)}
    raise UsageError(f"--compression must be one of none|gzip|lzf|zstd, not {name!r}")


def _jsonable(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _attr(value: Any) -> Any:
    """Python value -> HDF5 attribute (None becomes "" or an empty list where a list is expected)."""
    import numpy as np

    if value is None:
        return ""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, str):
        return storable(str(value))  # plain str: torch's TorchVersion and kin confuse h5py; UTF-8 always
    if isinstance(value, (list, tuple)):
        if not value:
            return np.zeros((0,), dtype="i8")
        if all(isinstance(v, str) for v in value):
            return [storable(str(v)) for v in value]
        return np.asarray(value)
    return value


def set_attr(obj: Any, key: str, value: Any) -> None:
    """Write one attribute; lists of strings become variable-length UTF-8 string arrays."""
    import h5py

    value = _attr(value)
    if isinstance(value, list):
        obj.attrs.create(key, data=value, dtype=h5py.string_dtype())
    else:
        obj.attrs[key] = value


def read_attr(value: Any) -> Any:
    """HDF5 attribute -> plain Python (lists, str, int, float, bool)."""
    import numpy as np

    if isinstance(value, bytes):
        return to_str(value)
    if isinstance(value, np.ndarray):
        return [read_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def setting_value(value: Any) -> Any:
    """A setting (a root attribute, as stored or as a run is about to write it) as plain Python (None
    as ""). Resume, merge and ``show`` read settings through it."""
    return _jsonable(read_attr(_attr(value)))


def setting_text(value: Any) -> str:
    """:func:`setting_value` as JSON text: error messages show it (``dtype="float16"``)."""
    return json.dumps(setting_value(value), ensure_ascii=False)


def first_difference(keys: Iterable[str], a: Any, b: Any) -> tuple[str, str, str] | None:
    """The first of ``keys`` whose settings in the attribute mappings ``a`` and ``b`` mean other rows
    (``--resume``, ``merge``), as ``(key, a's text, b's text)``; None when they all agree. Settings agree
    when their texts are equal, or by their option's ``same`` rule (the option table, featdump/options.py)."""
    for key in keys:
        have, want = setting_value(a.get(key)), setting_value(b.get(key))
        if setting_text(have) != setting_text(want) and not ((same := SAME.get(key)) and same(have, want)):
            return key, setting_text(have), setting_text(want)
    return None
