"""Job options: one frozen dataclass, one ``resolve()`` for precedence (defaults < TOML < flags)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16")
DTYPES = ("float32", "float16")
POOLS = ("none", "avg", "max")
COMPRESSIONS = ("none", "gzip", "lzf", "zstd")
DECODERS = ("cpu", "gpu")  # --decode: PIL in worker processes, or torchvision's nvjpeg on the CUDA device
TOKENS = ("seq", "map")  # token outputs as (N, T, D), or as a (N, D, H, W) map of the patch tokens
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one ``extract`` run needs, validated."""

    model: str
    inputs: tuple[str, ...]
    output: str
    out_indices: tuple[int, ...] | None = None
    layers: tuple[str, ...] | None = None
    tokens: str = "seq"
    output_stride: int | None = None
    img_size: tuple[int, int] | None = None
    pretrained: bool = True
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None
    workers: int | None = None
    dtype: str = "float32"
    pool: str = "none"
    compression: str = "none"
    fast_decode: bool = False  # JPEG DCT scaling / reduce before resize: faster, pixels change slightly
    decode: str = "cpu"
    compile: bool = False  # torch.compile the backbone
    shard: tuple[int, int] | None = None
    resume: bool = False
    overwrite: bool = False
    strict: bool = False
    quiet: bool = False
    max_image_pixels: int | None = None
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# Option name (as on the command line, dashes) -> dataclass field.
_FIELDS = {f.name for f in dataclasses.fields(ExtractConfig)} - {"command", "extra", "model", "inputs"}


def parse_indices(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``"1,2,-1"`` or ``[1, 2, -1]`` -> ``(1, 2, -1)``."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v.strip() for v in str(value).split(",") if v.strip()]
    try:
        out = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise UsageError(f"--out-indices takes whole numbers separated by commas (e.g. 1,2,-1), not {value!r}") from None
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


def parse_img_size(value: str | int | list[int] | tuple[int, ...] | None) -> tuple[int, int] | None:
    """``224`` -> ``(224, 224)``; ``"256x320"`` or ``[256, 320]`` -> ``(256, 320)`` (height x width)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        h = w = value
    elif isinstance(value, (list, tuple)) and len(value) in (1, 2):
        h, w = (value[0], value[-1])
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+)\s*)?", str(value))
        if not m:
            raise UsageError(f"--img-size takes SIZE or HEIGHTxWIDTH (e.g. 224 or 256x320), not {value!r}")
        h = int(m.group(1))
        w = int(m.group(2) or m.group(1))
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise UsageError(f"--img-size takes SIZE or HEIGHTxWIDTH (e.g. 224 or 256x320), not {value!r}") from None
    if not (8 <= h <= 8192 and 8 <= w <= 8192):
        raise UsageError(f"--img-size {h}x{w} is out of range (8 to 8192 pixels a side)")
    return (h, w)


def parse_shard(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, int] | None:
    """``"2/8"`` -> ``(2, 8)``: block 2 (0-based) of 8."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        i, n = value
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not m:
            raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), not {value!r}")
        i, n = int(m.group(1)), int(m.group(2))
    if not (isinstance(i, int) and isinstance(n, int) and n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), not {value!r}")
    return (i, n)


def _choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        shown = "|".join(str(c) for c in choices)
        raise UsageError(f"--{name.replace('_', '-')} must be one of {shown}, not {value!r}")
    return value


def _positive(name: str, value: Any, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= {minimum}, not {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a job preset; keys are option names (``out_indices`` or ``out-indices``)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {p} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS | {"model", "inputs"}:
            known = ", ".join(sorted(_FIELDS | {"model", "inputs"}))
            raise UsageError(f"unknown key {key!r} in config file {p}; known keys: {known}")
        out[name] = value
    return out


def resolve(given: dict[str, Any], file_values: dict[str, Any] | None = None, command: str = "") -> ExtractConfig:
    """Merge option values: dataclass defaults < config file < flags given on the command line.

    ``given`` holds only the options the user actually typed (plus ``model``/``inputs``/``output``
    when present); ``file_values`` comes from :func:`load_toml`.
    """
    merged: dict[str, Any] = dict(file_values or {})
    merged.update({k: v for k, v in given.items() if v is not None})

    model = merged.pop("model", None)
    if not model:
        raise UsageError("missing MODEL: name a timm model, e.g. featdump extract resnet50 images/ -o feats.h5")
    inputs = merged.pop("inputs", None) or ()
    if isinstance(inputs, str):
        inputs = (inputs,)
    if not inputs:
        raise UsageError("missing INPUT: give an image folder, a text file listing images, or image files")
    output = merged.pop("output", None)
    if not output:
        raise UsageError("missing -o/--output: where to write the HDF5 file, e.g. -o feats.h5")

    kw: dict[str, Any] = {}
    kw["out_indices"] = parse_indices(merged.pop("out_indices", None))
    kw["layers"] = parse_names(merged.pop("layers", None))
    if kw["out_indices"] is not None and kw["layers"] is not None:
        raise UsageError("--out-indices and --layers exclude each other; pick feature levels or module names")
    stride = merged.pop("output_stride", None)
    if stride is not None:
        try:
            stride = int(stride)
        except (TypeError, ValueError):
            stride = -1
        _choice("output_stride", stride, OUTPUT_STRIDES)
    kw["output_stride"] = stride
    kw["img_size"] = parse_img_size(merged.pop("img_size", None))
    kw["shard"] = parse_shard(merged.pop("shard", None))
    for name, choices in (
        ("precision", PRECISIONS),
        ("dtype", DTYPES),
        ("pool", POOLS),
        ("compression", COMPRESSIONS),
        ("decode", DECODERS),
        ("tokens", TOKENS),
    ):
        if name in merged:
            kw[name] = _choice(name, str(merged.pop(name)).lower(), choices)
    kw["batch_size"] = _positive("batch_size", merged.pop("batch_size", None))
    kw["workers"] = _positive("workers", merged.pop("workers", None), minimum=0)
    kw["max_image_pixels"] = _positive("max_image_pixels", merged.pop("max_image_pixels", None))
    if "device" in merged:
        kw["device"] = str(merged.pop("device"))
    checkpoint = merged.pop("checkpoint", None)
    kw["checkpoint"] = str(checkpoint) if checkpoint else None
    for flag in ("pretrained", "resume", "overwrite", "strict", "quiet", "fast_decode", "compile"):
        if flag in merged:
            value = merged.pop(flag)
            if not isinstance(value, bool):
                raise UsageError(f"{flag} must be true or false, not {value!r}")
            kw[flag] = value
    if kw.get("fast_decode") and kw.get("decode") == "gpu":
        raise UsageError("--fast-decode and --decode gpu exclude each other: fast decoding is a CPU (PIL) shortcut")
    if kw.get("resume") and kw.get("overwrite"):
        raise UsageError("--resume and --overwrite exclude each other: continue the file, or replace it")
    if merged:
        raise UsageError(f"unknown option(s): {', '.join(sorted(merged))}")
    return ExtractConfig(
        model=str(model),
        inputs=tuple(str(i) for i in inputs),
        output=str(output),
        command=command,
        **kw,
    )
