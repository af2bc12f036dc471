"""Layers as data: what a backbone produces, described once and rendered by ``inspect``, the writer's
attributes and the summary table. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class LayerInfo:
    """One stored output: a feature level (``index`` >= 0) or a named module (``index`` = -1)."""

    name: str
    module: str
    index: int
    channels: int
    reduction: int | float  # input pixels per cell; a float only after a --process resize to an odd grid
    shape: tuple[int, ...]  # per image, as stored without pooling: (C, H, W) or (T, D)
    layout: str = "NCHW"  # what the model returns: NCHW, NHWC (permuted on store) or NLC (tokens)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    processed: tuple[int, ...] | None = None  # the stored shape after --process (run/processors.py), pool included

    def stored_shape(self, pool: str = "none") -> tuple[int, ...]:
        if self.processed is not None:
            return self.processed
        if pool == "none" or self.attrs.get("part") == "prefix":  # prefix tokens are not spatial: never pooled
            return self.shape
        return (self.shape[-1],) if self.layout == "NLC" else (self.shape[0],)

    def row_shape(self, pool: str = "none") -> tuple[int, ...]:
        """The shape of one row of the stored dataset: :meth:`stored_shape`, or one cell (C,) of a ragged layer."""
        return self.stored_shape("avg" if is_ragged(self, pool) else pool)

    def bytes_per_image(self, dtype: str = "float32", pool: str = "none") -> int:
        return math.prod(self.stored_shape(pool)) * DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class DataConfig:
    """timm's resolved evaluation data config for the model at the chosen input size."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str
    # --img-size long:L | short:S | native: ("long", 512) etc., each image resized to a multiple of `unit`
    size_mode: tuple[str, int] | None = None
    unit: int = 0
    max_side: int = 2048

    @classmethod
    def from_timm(cls, cfg: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=tuple(int(v) for v in cfg["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=str(cfg.get("interpolation", "bilinear")),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            crop_mode=str(cfg.get("crop_mode", "center")),
        )

    def with_options(self, cfg: Any) -> DataConfig:
        """This config with ``--crop-mode`` / ``--crop-pct`` / ``--interpolation`` in place of the
        model's (None: keep it)."""
        names = ("crop_mode", "crop_pct", "interpolation")
        return dataclasses.replace(self, **{n: getattr(cfg, n) for n in names if getattr(cfg, n) is not None})

    def transform(self) -> Any:
        """Exactly timm's evaluation transform for this config; for a size mode, :class:`ResizeToUnit`
        then to-tensor and the model's normalisation as in timm's eval transform."""
        from timm.data import create_transform
        from timm.data.transforms import MaybeToTensor
        from torchvision import transforms

        if self.size_mode is not None:
            resize = ResizeToUnit(self.size_mode, self.unit, self.max_side, self.interpolation)
            return transforms.Compose([resize, MaybeToTensor(), transforms.Normalize(self.mean, self.std)])
        timm_keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        return create_transform(**{k: getattr(self, k) for k in timm_keys}, is_training=False)


@dataclass
class Backbone:
    """A ready model plus what it produces."""

    name: str
    model: Any  # torch.nn.Module returning a list of tensors, one per layer
    layers: list[LayerInfo]
    data: DataConfig
    out_indices: tuple[int, ...] | None
    output_stride: int | None
    weights: str


@dataclass(frozen=True)
class Description:
    """What ``inspect`` shows: layers and data config, computed without weights or downloads."""

    name: str
    layers: list[LayerInfo]
    data: DataConfig
    num_levels: int
    out_indices: tuple[int, ...] | None
    output_stride: int | None


def is_ragged(layer: LayerInfo, pool: str) -> bool:
    """A layer stored at each row's own grid (``--img-size long:L|short:S|native``): a spatial map
    the backbone marked ``layout = "ragged"``, and not pooled (a pooled layer stays (N, C))."""
    return layer.attrs.get("layout") == "ragged" and pool == "none"


def size_unit(layers: list[LayerInfo]) -> int:
    """A size mode's unit: each side of a resized image is a multiple of it (the patch size of a
    patch model, the largest reduction of the stored levels for a CNN, after --output-stride)."""
    return int(max((x.reduction for x in layers if len(x.shape) == 3), default=1))


def mark_ragged(layers: list[LayerInfo]) -> list[LayerInfo]:
    """A size mode's layers: every spatial map (not prefix tokens) marked ragged; ``shape`` stays
    the one at the mode's nominal square size (an upper bound for the space check and inspect)."""
    return [dataclasses.replace(x, attrs={**x.attrs, "layout": "ragged"}) if _spatial(x) else x for x in layers]


def _spatial(layer: LayerInfo) -> bool:
    return len(layer.shape) == 3 and layer.attrs.get("part") != "prefix"


def to_unit(side: float, unit: int) -> int:
    """A size mode's side: ``side`` rounded to the nearest multiple of ``unit``, at least one unit."""
    return max(1, math.floor(side / unit + 0.5)) * unit


def at_grid(layers: list[LayerInfo], height: int, width: int) -> list[LayerInfo]:
    """The layers with each spatial map (not prefix tokens) at its grid for a ``height`` x ``width`` input."""
    def grid(x: LayerInfo) -> tuple[int, ...]:
        return (x.shape[0], -(-height // int(x.reduction)), -(-width // int(x.reduction)))

    return [dataclasses.replace(x, shape=grid(x)) if _spatial(x) else x for x in layers]


def guess_layout(model: Any, shape: tuple[int, ...], channels: int | None = None) -> str:
    """How an output of per-image ``shape`` is laid out: ``NLC`` (tokens) for 2-d, ``NHWC`` or
    ``NCHW`` for 3-d maps (the model's ``output_fmt``, checked against ``channels`` when known).
    The one layout guess of the feature-level and the named-module paths."""
    if len(shape) == 2:
        return "NLC"
    if len(shape) == 3:
        fmt = str(getattr(model, "output_fmt", "NCHW")).split(".")[-1].upper()  # timm's declared format
        if channels is None:
            return "NHWC" if fmt == "NHWC" else "NCHW"
        if fmt == "NHWC" and shape[-1] == channels:
            return "NHWC"
        if shape[0] != channels and shape[-1] == channels:
            return "NHWC"
    return "NCHW"


def chw(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A per-image shape as stored: NHWC maps become (C, H, W); anything else unchanged."""
    return (shape[2], shape[0], shape[1]) if layout == "NHWC" else shape


class ResizeToUnit:
    """``--img-size long:L | short:S | native``: each image resized, aspect kept, to the shape
    :meth:`shape_for` gives it, by torchvision's ``Resize((h, w))`` at the model's interpolation (on
    a PIL image, or a uint8 tensor for ``--decode gpu``); no crop, no pad."""

    def __init__(self, mode: tuple[str, int], unit: int, max_side: int, interpolation: str) -> None:
        from timm.data.transforms import str_to_interp_mode

        self.mode, self.side = mode
        self.unit, self.max_side = max(1, int(unit)), int(max_side)
        self.interpolation = str_to_interp_mode(interpolation)

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` for an image of that size: scaled so the long (``long``) or short (``short``)
        side is the mode's, or the long side at most ``max_side`` (``native``); each side then
        rounded to the nearest multiple of the unit, at least one unit."""
        h, w = max(1, int(height)), max(1, int(width))
        scale = {"long": self.side / max(h, w), "short": self.side / min(h, w)}.get(self.mode, min(1.0, self.max_side / max(h, w)))
        return to_unit(h * scale, self.unit), to_unit(w * scale, self.unit)

    def __call__(self, img: Any) -> Any:
        from torchvision.transforms import functional

        h, w = (img.shape[-2], img.shape[-1]) if hasattr(img, "shape") else (img.size[1], img.size[0])
        return functional.resize(img, list(self.shape_for(h, w)), interpolation=self.interpolation, antialias=True)
