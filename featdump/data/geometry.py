"""Where each model-input pixel came from: the affine map of timm's eval transform, per image.

``/geometry`` rows are ``orig_h, orig_w, scale_y, scale_x, offset_y, offset_x`` with ``original =
model_input * scale + offset`` per axis, in continuous pixel coordinates (pixel ``i`` on ``[i, i + 1)``,
PIL's and torchvision's resize convention; docs/dense.md). The map walks the transform's own PIL steps
with their own arithmetic (torchvision's ``Resize`` and ``CenterCrop``, timm's ``ResizeKeepRatio`` and
``CenterCropOrPad``); a step it does not know makes the row NaN, never a wrong number. No torch import
at module level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

COLUMNS = ("orig_h", "orig_w", "scale_y", "scale_x", "offset_y", "offset_x")
RESIZES = ("Resize", "ResizeKeepRatio", "ResizeToUnit")


class Geometry:
    """The affine map of a transform's PIL steps (resize, crop, pad), for any original size."""

    def __init__(self, transform: Any) -> None:
        from featdump.data.transform import SplitTransform

        split = SplitTransform(transform)
        self.steps = split.pil_steps if split.split else list(getattr(transform, "transforms", [transform]))
        self.resize = next((s for s in self.steps if type(s).__name__ in RESIZES), None)  # the first resize step

    def of(self, height: int, width: int) -> tuple[float, float, float, float, float, float]:
        """``(orig_h, orig_w, scale_y, scale_x, offset_y, offset_x)`` for an image of that size."""
        h, w = int(height), int(width)
        sy = sx = 1.0
        oy = ox = 0.0
        for step in self.steps:
            kind = type(step).__name__
            if kind in RESIZES:
                nh, nw = _resized(step, h, w)
                sy, sx = sy * h / nh, sx * w / nw
                h, w = nh, nw
            elif kind in ("CenterCrop", "CenterCropOrPad"):
                size = step.size if isinstance(step.size, (list, tuple)) else [step.size]
                ch, cw = int(size[0]), int(size[-1])
                # padding first where the crop is larger (torchvision's center_crop, timm's center_crop_or_pad)
                top = round((max(h, ch) - ch) / 2.0) - max(0, (ch - h) // 2)
                left = round((max(w, cw) - cw) / 2.0) - max(0, (cw - w) // 2)
                oy, ox, h, w = oy + sy * top, ox + sx * left, ch, cw
            elif kind in ("ToTensor", "MaybeToTensor", "Normalize", "MaybePILToTensor", "PILToTensor"):
                continue
            else:  # unknown geometry: NaN rather than a wrong map
                return (float(height), float(width), math.nan, math.nan, math.nan, math.nan)
        return (float(height), float(width), sy, sx, oy, ox)

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of an image of that size after the transform's resize (its own size without one)."""
        return _resized(self.resize, height, width) if self.resize is not None else (height, width)

    def rows(self, sizes: Sequence[tuple[int, int]]) -> Any:
        """A ``(B, 6)`` float64 array for ``(height, width)`` sizes (every decoded image's is known)."""
        import numpy as np

        return np.array([self.of(*size) for size in sizes], dtype=np.float64).reshape(len(sizes), len(COLUMNS))


def _resized(step: Any, h: int, w: int) -> tuple[int, int]:
    """The output ``(h, w)`` of a resize step, by the step's own rule."""
    if hasattr(step, "shape_for"):  # ResizeToUnit (a size mode): each image's own shape
        return step.shape_for(h, w)
    if type(step).__name__ == "ResizeKeepRatio":
        import torch

        fake = torch.zeros(1, 1, 1).expand(3, h, w)  # only its dimensions are read (no memory)
        nh, nw = step.get_params(fake, step.size, step.longest)  # eval: no random scale or aspect
        return int(nh), int(nw)
    size = step.size
    max_size = getattr(step, "max_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    # torchvision's Resize(int): the shorter side becomes `size`, the longer keeps the aspect (floored)
    requested = int(size[0] if isinstance(size, (list, tuple)) else size)
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = requested, int(requested * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if w <= h else (new_short, new_long)


def cell_boxes(
    geometry: Any, grid: tuple[int, int], input_hw: tuple[int, int], reduction: float, pixel_grid: Any = None
) -> Any:
    """``(H, W, 4)`` boxes ``y0, x0, y1, x1`` in original-image pixels of the cells of an ``H x W`` map.

    Cell ``i`` covers model-input ``[i * s, (i + 1) * s)`` with ``s`` the layer's stride (``reduction``;
    ``input / H`` where the grid does not tile the input at that stride), or ``[offset + i * scale, ...)``
    from ``pixel_grid`` (``scale_y, offset_y, scale_x, offset_x``, set by ``--process``); cut at the
    input's edge, mapped through the row's affine map, clipped to the image; a cell wholly in padding is NaN.
    """
    import numpy as np

    gh, gw = grid
    in_h, in_w = input_hw
    orig_h, orig_w, sy, sx, oy, ox = (float(v) for v in geometry)

    def edges(n: int, size: int, scale: float, offset: float, extent: float, cells: Any) -> tuple[Any, Any]:
        step = float(reduction) if reduction and math.ceil(size / reduction) == n else size / n
        step, start = (float(cells[0]), float(cells[1])) if cells else (step, 0.0)
        lo = np.clip(start + np.arange(n) * step, 0, size)
        hi = np.clip(start + (np.arange(n) + 1) * step, 0, size)
        lo, hi = lo * scale + offset, hi * scale + offset
        inside = (hi > 0) & (lo < extent)
        lo, hi = np.clip(lo, 0, extent), np.clip(hi, 0, extent)
        return np.where(inside, lo, np.nan), np.where(inside, hi, np.nan)

    y0, y1 = edges(gh, in_h, sy, oy, orig_h, pixel_grid[:2] if pixel_grid else None)
    x0, x1 = edges(gw, in_w, sx, ox, orig_w, pixel_grid[2:] if pixel_grid else None)
    out = np.stack(np.broadcast_arrays(y0[:, None], x0[None, :], y1[:, None], x1[None, :]), axis=-1)
    out[np.isnan(out).any(axis=-1)] = np.nan  # wholly in padding along either axis: the whole box
    return out
