"""The one split of timm's eval transform: PIL steps per image, to-tensor and the rest per batch.

Every user (CPU loaders, ``--decode gpu``, ``viz``) cuts the transform at the same step
(:data:`TO_TENSOR`), and the halves give the whole transform's numbers bit for bit (tests/test_loading.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

# The steps that count as to-tensor (uint8 PIL -> float in [0, 1]): what timm's eval transform uses.
# PILToTensor keeps uint8, so it is not one of them (a transform holding it is applied whole).
TO_TENSOR = ("ToTensor", "MaybeToTensor")


class SplitTransform:
    """timm's eval transform as ``pil`` (per image, any thread) + ``finish`` (per batch). ``pil(img)``
    gives an ``(H, W, 3)`` uint8 array when the transform has a to-tensor step, else the whole result."""

    def __init__(self, transform: Any) -> None:
        steps = list(getattr(transform, "transforms", [transform]))
        cut = next((k for k, s in enumerate(steps) if type(s).__name__ in TO_TENSOR), len(steps))
        self.whole, self.split = transform, cut < len(steps)
        self.pil_steps: list[Any] = steps[:cut] if self.split else []
        self.tensor_part: list[Any] = steps[cut:]  # to-tensor and the steps after it
        self.tensor_steps = steps[cut + 1 :]
        self.batch_steps = [_batched(step) for step in self.tensor_steps]

    def pil(self, img: Any) -> Any:
        import numpy as np

        if not self.split:
            return self.whole(img)
        img = self.pil_view(img)
        if getattr(img, "mode", None) != "RGB":  # not 8-bit RGB after all: the rest as it is
            for step in self.tensor_part:
                img = step(img)
            return img
        return np.asarray(img)

    def pil_view(self, img: Any) -> Any:
        """Only the PIL steps (resize, crop): the picture the model sees, before normalisation."""
        for step in self.pil_steps:
            img = step(img)
        return img

    def on_tensor(self, x: Any) -> Any:
        """The transform for a decoded uint8 ``(3, H, W)`` tensor (``--decode gpu``): the same
        resize (antialiased, rounded back to uint8 like PIL) and crop, to-tensor as ``/ 255``, then
        the tensor steps. A transform without a to-tensor step is applied whole."""
        if not self.split:
            return self.whole(x)
        x = self.pil_view(x).float().div_(255.0)
        for step in self.tensor_steps:
            x = step(x)
        return x

    def finish(self, items: Sequence[Any]) -> Any:
        """Stacked ``(B, 3, H, W)`` float32 pixels (channels_last strides when all items were
        uint8 arrays), equal element for element to the transform applied per image."""
        import numpy as np
        import torch

        if all(isinstance(x, np.ndarray) for x in items):
            x = torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2)  # NHWC memory = channels_last
            x = x.to(torch.float32).div(255)  # torchvision's to_tensor: uint8 -> float, / 255
            for step in self.batch_steps:
                x = step(x)
            return x
        rows = []
        for x in items:
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x).permute(2, 0, 1).to(torch.float32).div(255)
                for step in self.tensor_steps:
                    x = step(x)
            rows.append(x)
        return torch.stack(rows)


def _batched(step: Any) -> Callable[[Any], Any]:
    """One post-to-tensor step on a (B, C, H, W) batch: torchvision's Normalize as the same
    ``sub_(mean).div_(std)`` broadcast over the batch, anything else image by image."""
    import torch

    if type(step).__name__ == "Normalize" and hasattr(step, "mean") and hasattr(step, "std"):
        mean = torch.as_tensor(step.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(step.std, dtype=torch.float32).view(1, -1, 1, 1)
        return lambda x: x.sub_(mean).div_(std)  # x is float32: to_tensor's output
    return lambda x: torch.stack([step(row) for row in x])


MAX_ASPECT = 1000  # longer side / shorter side beyond which an image is refused before resizing
DEFAULT_RESIZED_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: the bound without --max-image-pixels


class ResizeGuard:
    """Refuses (ValueError: a ``/failed`` record), before resizing, an image the transform would blow up:
    aspect beyond :data:`MAX_ASPECT`, or a resized size over ``max_pixels``. A 1x20000 PNG of 165 bytes
    would otherwise resize to 256x5,120,000 pixels."""

    def __init__(self, data: Any, geometry: Any, max_pixels: int | None = None) -> None:
        self.resized = geometry.resized  # featdump/data/geometry.py: the transform's own resize arithmetic
        th, tw = (int(v) for v in data.input_size[-2:])
        pct = float(data.crop_pct) or 0.875
        target = math.floor(th / pct) * math.floor(tw / pct)
        # never below 16x the resize target: a small --max-image-pixels bounds decoding, not a 4:1 panorama's resize
        self.max_pixels = max(max_pixels or DEFAULT_RESIZED_PIXELS, 16 * target)

    def __call__(self, width: int, height: int) -> None:
        long, short = max(width, height), max(1, min(width, height))
        if long / short > MAX_ASPECT:
            raise ValueError(
                f"extreme aspect ratio ({width}x{height}, {long / short:.0f}:1 > {MAX_ASPECT}:1): "
                "refused before resizing"
            )
        rh, rw = self.resized(height, width)
        if rw * rh > self.max_pixels:
            raise ValueError(
                f"resizing {width}x{height} would make {rw}x{rh} = {rw * rh} pixels (> {self.max_pixels}); "
                "refused before resizing (raise --max-image-pixels if this is a real image)"
            )
