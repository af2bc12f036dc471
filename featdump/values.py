"""One option value at a time: parsed from a flag, a TOML value or an API argument, and checked,
with the one-line usage errors the options table's ``parse`` and ``resolve`` raise."""

from __future__ import annotations

import math
import re
from typing import Any

from featdump.errors import UsageError
from featdump.text import unsafe_name


def parse_indices(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``"1,2,-1"`` or ``[1, 2, -1]`` -> ``(1, 2, -1)``; ``"all"`` -> ``()``: every level the model has."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() == "all":
        return ()
    items: list[Any] = list(value) if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",")]
    if len(items) > 1 and any(v == "" for v in items):  # "1,,2" or "1,": a level left out by mistake?
        raise UsageError(f"--out-indices {value!r} has an empty item; give levels separated by single commas, e.g. 1,2,-1")
    items = [v for v in items if v != ""]
    try:
        out = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise UsageError(
            f"--out-indices takes whole numbers separated by commas (e.g. 1,2,-1) or all, not {value!r}"
        ) from None
    if not out:
        raise UsageError("--out-indices is empty; give at least one level, e.g. --out-indices -1")
    if len(set(out)) != len(out):
        raise UsageError(f"--out-indices lists a level twice: {value!r}")
    return out


def parse_names(value: str | list[str] | tuple[str, ...] | None, option: str = "--layers") -> tuple[str, ...] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``."""
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    out = tuple(str(v).strip() for v in items if str(v).strip())
    if not out:
        raise UsageError(f"{option} is empty; give module names separated by commas")
    if len(set(out)) != len(out):
        raise UsageError(f"{option} lists a name twice: {value!r}")
    return out


def parse_kept(value: str | list[str] | tuple[str, ...] | None, option: str) -> tuple[str, ...] | None:
    """``--keep`` / ``--keep-columns``: names, each of which names a dataset ``/meta/<name>``."""
    out = parse_names(value, option)
    for name in out or ():
        if why := unsafe_name(name):
            raise UsageError(f"{option} {name!r} {why}; it names the dataset /meta/<name>")
    return out


ImgSize = tuple[int, int] | tuple[str, int]  # (height, width), or a size mode: ("long", 512), ("native", 0)


def parse_img_size(value: str | int | list[Any] | tuple[Any, ...] | None) -> ImgSize | None:
    """``224`` -> ``(224, 224)``; ``"256x320"`` or ``[256, 320]`` -> ``(256, 320)`` (height x width);
    ``"long:512"`` / ``"short:256"`` / ``"native"`` (or ``("long", 512)``) -> a size mode."""
    if value is None or value == "":
        return None
    text = str(value).lower()
    if isinstance(value, (list, tuple)) and len(value) in (1, 2):
        text = f"{value[0]}:{value[-1]}" if value[0] in ("long", "short", "native") else f"{value[0]}x{value[-1]}"
    m = re.fullmatch(r"\s*(?:(long|short)\s*:\s*(\d+)|(native)(?::0)?|(\d+)\s*(?:[x×,]\s*(\d+))?)\s*", text)
    if m is None or isinstance(value, bool):
        raise UsageError(
            f"--img-size takes SIZE or HEIGHTxWIDTH (e.g. 224 or 256x320), or long:L, short:S, native, not {value!r}"
        )
    if m[3]:
        return ("native", 0)
    sides = [int(m[2])] if m[1] else [int(m[4]), int(m[5] or m[4])]
    if not all(8 <= side <= 8192 for side in sides):
        raise UsageError(f"--img-size {text.strip()} is out of range (8 to 8192 pixels a side)")
    return (m[1], sides[0]) if m[1] else (sides[0], sides[-1])


def size_mode_text(img_size: ImgSize | None) -> str:
    """The ``img_size_mode`` attribute: ``long:512``, ``short:256``, ``native``; "" for a fixed size."""
    if img_size is None or not isinstance(img_size[0], str):
        return ""
    return "native" if img_size[0] == "native" else f"{img_size[0]}:{img_size[1]}"


def parse_tiles(value: str | int | list[int] | tuple[int, ...] | None) -> tuple[int, int] | None:
    """``--tiles``: ``512`` -> ``(512, 512)``; ``"512:384"`` or ``[512, 384]`` -> ``(512, 384)`` (size, stride)."""
    if value is None or value == "" or value == []:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", ":".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    if m is None or isinstance(value, bool):
        raise UsageError(f"--tiles takes SIZE or SIZE:STRIDE in pixels (e.g. 512 or 512:384), not {value!r}")
    size, stride = int(m[1]), int(m[2] or m[1])
    if not (8 <= size <= 8192 and 1 <= stride <= 8192):
        raise UsageError(f"--tiles {size}:{stride} is out of range (SIZE 8 to 8192 pixels, STRIDE 1 to 8192)")
    return (size, stride)


def parse_shard(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, int] | None:
    """``"2/8"`` -> ``(2, 8)``: block 2 (0-based) of 8."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        i, n = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        i, n = (int(m[1]), int(m[2])) if m else (0, 0)  # no I/N: refused below
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), not {value!r}")
    return (i, n)


def parse_process(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"l2norm"`` or ``["resize:stride=8", "l2norm"]`` -> a tuple of ``NAME[:ARG[:ARG]]`` strings."""
    if value is None or value == "" or value == []:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = tuple(str(v).strip() for v in items)
    bad = [v for v in out if not v or v.startswith(":")]
    if bad:
        raise UsageError(f"--process takes NAME[:ARG[:ARG]] (e.g. l2norm, resize:stride=8, pca:64:basis.npz), not {bad[0]!r}")
    return out


PIN = " sha256:"  # a file a setting reads, pinned: ``pca:8:basis.npz sha256:HEX`` (run/processors.py)


def unpinned(value: Any) -> Any:
    """A setting without its sha256 pins: what a user types for it."""
    if isinstance(value, tuple):
        return tuple(v.split(PIN)[0] if isinstance(v, str) else v for v in value)
    return value


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        shown = "|".join(str(c) for c in choices)
        raise UsageError(f"--{name.replace('_', '-')} must be one of {shown}, not {value!r}")
    return value


def check_positive(name: str, value: Any, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= {minimum}, not {value!r}")
    return value


def parse_number(value: Any, flag: str, high: float, examples: str) -> float:
    """A number F with 0 < F <= ``high``, or a usage error naming ``flag``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 < number <= high:
        raise UsageError(f"{flag} takes a number in (0, {high:g}], e.g. {examples}, not {value!r}")
    return number


def path_or_none(value: Any) -> str | None:
    return str(value) if value else None


def stride_attr(stride: int | None) -> int | str:
    """The ``output_stride`` attribute for ``--output-stride``: the stride asked, else ``"none"`` (the
    model's own strides, which the feature datasets' ``reduction`` attributes give)."""
    return stride or "none"


def stored_stride(value: Any) -> Any:
    """An ``output_stride`` attribute as the option value: None where none was asked, else the stride."""
    return None if value is None or (isinstance(value, str) and value == "none") else value


def parse_weights(tag: Any) -> dict[str, Any]:
    """The ``weights`` attribute (model/weights.py writes it) -> ``{"pretrained": bool, "checkpoint":
    path or None, "sha256": hex or None}``."""
    tag = str(tag or "")
    if tag == "random":
        return {"pretrained": False, "checkpoint": None, "sha256": None}
    if tag.startswith("checkpoint:"):
        body = tag[len("checkpoint:") :]
        path, _, sha = body.rpartition(" sha256:")
        return {"pretrained": True, "checkpoint": path or body, "sha256": sha or None}
    return {"pretrained": True, "checkpoint": None, "sha256": None}
