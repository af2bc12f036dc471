"""The forward stage: a batch of pixels -> one array per stored layer, in the stored layout."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from featdump.data.batching import ShapeGroups
from featdump.errors import FeatdumpError
from featdump.model.layers import Backbone, LayerInfo, is_ragged
from featdump.run.copies import CudaCopies
from featdump.run.processors import apply
from featdump.text import first_line


def to_storage(out: Any, layer: LayerInfo, pool: str, dtype: Any) -> Any:
    """One layer's batch output -> the stored layout ((B,C,H,W), (B,T,D) or pooled (B,C))."""

    if layer.layout == "NHWC":
        out = out.permute(0, 3, 1, 2)
    if pool != "none" and out.ndim > 2 and layer.attrs.get("part") != "prefix":  # --tokens both: prefix kept
        if layer.layout == "NLC":  # pool the patch tokens only, like timm's global_pool="avg"
            out = out[:, int(layer.attrs.get("num_prefix_tokens", 0)) :]
        dims = (1,) if layer.layout == "NLC" else (2, 3)
        out = out.float()
        out = out.mean(dim=dims) if pool == "avg" else out.amax(dim=dims)
    # the cast first, then NCHW: on a CPU the cast of contiguous memory is vectorised and the permuting
    # copy moves half the bytes, 30% less CPU than one strided pass (resnet50, float16: docs/performance.md)
    return out.to(dtype=dtype).contiguous()


class Forward:
    """Batch of pixels -> list of numpy arrays, one per stored layer."""

    def __init__(
        self,
        backbone: Backbone,
        device: Any,
        precision: str,
        pool: str,
        dtype: str,
        channels_last: bool,
        compile: bool = False,
        processors: Any = (),
    ) -> None:
        import torch

        self.model = backbone.model.to(device)
        self.layers = backbone.layers
        self.device = device
        self.pool = pool
        self.dtype = torch.float16 if dtype == "float16" else torch.float32
        self.channels_last = channels_last and device.type in ("cpu", "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)  # fp32: no autocast
        self.autocast: Callable[[], Any] = contextlib.nullcontext
        if amp is not None:
            self.autocast = lambda: torch.autocast(device_type=device.type, dtype=amp)
        self.compiled = compile
        self.processors = list(processors)  # --process (run/processors.py), in order, before the dtype cast
        self._nonfinite: Any = None  # per stored layer: NaN/inf values so far (a tensor on the device)
        self.copies = CudaCopies(device) if device.type == "cuda" else None  # CUDA: copies overlap the next forward (run/copies.py)
        if compile:
            self.model = torch.compile(self.model)

    def __call__(self, pixels: Any) -> list[Any]:
        """One array per stored layer; for a size mode's :class:`~featdump.data.batching.ShapeGroups`,
        a ragged layer's rows as a list of ``(C, h_i, w_i)`` arrays in row order (fixed ones stacked)."""
        import torch

        with torch.inference_mode():
            if isinstance(pixels, ShapeGroups):
                return self._by_shape(pixels)
            stored = self._stored(pixels)
            if self.copies is None:
                return [s.cpu().numpy() for s in stored]
            return self.copies.submit(stored)  # a Pending: the writer waits for its event

    def _stored(self, pixels: Any) -> list[Any]:
        import torch

        x = pixels.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            outs = self._model(x)
        if isinstance(outs, dict):
            outs = list(outs.values())
        if self.processors:
            stored = [apply(self.processors, to_storage(o, layer, self.pool, torch.float32), self.dtype) for o, layer in zip(outs, self.layers, strict=True)]
        else:
            stored = [to_storage(o, layer, self.pool, self.dtype) for o, layer in zip(outs, self.layers, strict=True)]
        self._count_nonfinite(stored)
        return stored

    def _by_shape(self, groups: ShapeGroups) -> list[Any]:
        """Each shape's batch through the model (copied back synchronously), the rows put back in order."""
        import numpy as np

        rows: list[list[Any]] = [[None] * groups.count for _ in self.layers]
        for where, pixels in groups.groups:
            for k, out in enumerate(self._stored(pixels)):
                for j, row in zip(where, out.cpu().numpy(), strict=True):
                    rows[k][j] = row
        return [per_row if is_ragged(layer, self.pool) else np.stack(per_row) for layer, per_row in zip(self.layers, rows, strict=True)]

    def _count_nonfinite(self, stored: list[Any]) -> None:
        """Add each layer's NaN/inf count to a running total kept on the device (no sync on CUDA). On
        other devices the rows come back at once anyway: a float32 sum, finite only if every value is,
        picks the layers worth counting (counting every value cost a CPU as much as the float16 cast)."""
        import torch

        if self.copies is None:
            counts = torch.tensor([0 if s.sum(dtype=torch.float32).isfinite() else s.numel() - int(torch.isfinite(s).sum()) for s in stored])
        else:
            counts = torch.stack([s.numel() - torch.isfinite(s).sum() for s in stored])
        self._nonfinite = counts if self._nonfinite is None else self._nonfinite + counts

    def nonfinite(self) -> list[int]:
        """Per stored layer, how many NaN/inf values this instance has returned."""
        if self._nonfinite is None:
            return [0] * len(self.layers)
        return [int(v) for v in self._nonfinite.tolist()]

    def _model(self, x: Any) -> Any:
        if not self.compiled:
            return self.model(x)
        try:
            return self.model(x)
        except Exception as exc:  # noqa: BLE001 - inductor needs a compiler toolchain and more
            raise FeatdumpError(f"--compile: torch.compile failed ({first_line(exc)[:300]}); run without --compile") from None
