"""The meaning of an existing file's rows, as option values: ``extract --like FILE`` and ``verify``.

:func:`recorded_options` maps a featdump file's root attributes back to the options that made them
(model, levels or modules, tokens, output stride, input size, weights, precision, dtype, pool,
decoding, processors). A checkpoint is used only when its sha256 still matches the recorded one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from featdump.errors import UsageError
from featdump.text import first_line
from featdump.values import stored_stride


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a featdump file (its last commit; shards and merged files alike)."""
    from featdump.store.describe import open_featdump
    from featdump.store.format import read_attr

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    try:
        h5 = open_featdump(p)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable as a featdump file
        raise UsageError(f"{p} is not a readable featdump file ({first_line(exc)})") from None
    try:
        return {k: read_attr(v) for k, v in h5.attrs.items()}
    finally:
        h5.close()


def parse_weights(tag: str) -> dict[str, Any]:
    """``weights`` attribute -> ``{"pretrained": bool, "checkpoint": path or None, "sha256": hex or None}``."""
    tag = str(tag or "")
    if tag == "random":
        return {"pretrained": False, "checkpoint": None, "sha256": None}
    if tag.startswith("checkpoint:"):
        body = tag[len("checkpoint:") :]
        path, _, sha = body.rpartition(" sha256:")
        return {"pretrained": True, "checkpoint": path or body, "sha256": sha or None}
    return {"pretrained": True, "checkpoint": None, "sha256": None}


def check_checkpoint(path: str, sha256: str | None, where: str) -> None:
    """The recorded checkpoint must exist and hash to the recorded sha256 (else UsageError)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{where}: the checkpoint it was made with, {path}, is gone; put it back")
    if sha256:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != sha256:
            raise UsageError(
                f"{where}: checkpoint {path} has changed since the file was made (sha256 {h.hexdigest()[:12]}…, "
                f"recorded {sha256[:12]}…); its rows cannot be reproduced with it"
            )


def recorded_options(path: str | Path, attrs: dict[str, Any] | None = None, where: str = "--like") -> dict[str, Any]:
    """Every option that defines the rows' meaning, as :func:`featdump.options.resolve` takes them."""
    attrs = read_attrs(path) if attrs is None else attrs
    where = f"{where} {path}"
    if attrs.get("format") != "featdump" or not attrs.get("model"):
        raise UsageError(f"{where} is not a featdump file")
    named = not attrs.get("out_indices") and bool(attrs.get("layers"))
    decode = str(attrs.get("decode", "exact"))
    size = attrs.get("input_size") or []
    weights = parse_weights(str(attrs.get("weights", "")))
    if weights["checkpoint"]:
        check_checkpoint(weights["checkpoint"], weights["sha256"], where)
    process = attrs.get("process")
    out: dict[str, Any] = {
        "model": str(attrs["model"]),
        "out_indices": None if named else tuple(int(i) for i in attrs.get("out_indices") or ()) or None,
        "layers": tuple(str(n) for n in attrs["layers"]) if named else None,
        "output_stride": stored_stride(attrs.get("output_stride")),  # resolve() checks it
        "img_size": (int(size[1]), int(size[2])) if len(size) == 3 else None,
        "pretrained": weights["pretrained"],
        "checkpoint": weights["checkpoint"],
        "precision": str(attrs.get("precision", "fp32")),
        "dtype": str(attrs.get("dtype", "float32")),
        "pool": str(attrs.get("pool", "none")),
        "decode": "gpu" if decode == "gpu" else "cpu",
        "fast_decode": decode == "fast",
        "process": tuple(str(p) for p in process) if isinstance(process, list) and process else None,
    }
    if "tokens" in attrs:
        out["tokens"] = str(attrs["tokens"])
    return out


def recorded_columns(attrs: dict[str, Any]) -> dict[str, str | None]:
    """The table columns a file's rows were read from (``--path-column``, ``--image-column``,
    ``--id-column``; None where not given). Not part of :func:`recorded_options`: ``--like`` takes
    the rows' meaning to other inputs, which need not be a table."""
    from featdump.data.sources import TABLE_OPTIONS

    return {name: str(attrs.get(name) or "") or None for name in TABLE_OPTIONS}
