"""Any module of any timm model by name (``--layers``), through forward hooks on the full model.
Described as the feature levels are (``index`` -1), so nothing downstream needs a special case.
Token layouts (``--tokens``): docs/file-format.md."""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from featdump.errors import UsageError
from featdump.model.create import (
    check_model_name,
    check_tiling,
    create_checked,
    on_meta,
    resolve_data_config,
    zero_forward,
)
from featdump.model.layers import DataConfig, Description, LayerInfo, chw, guess_layout
from featdump.options import TOKENS
from featdump.values import check_choice


@dataclass(frozen=True)
class ModuleRecord:
    """One module seen during a forward pass: its class, output shape per image, how often it ran."""

    name: str
    kind: str
    shape: tuple[int, ...] | None  # per image; None when the output is not a single tensor
    calls: int
    output: str = "tensor"  # tensor | tuple | dict | none


# --------------------------------------------------------------------------- model


def trace_modules(model: Any, input_size: tuple[int, int, int]) -> list[ModuleRecord]:
    """Every named module with its output's shape, from one forward pass of a zero image on the
    model's device (meta when built there: shapes only)."""
    import torch

    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    kinds: dict[str, str] = {}
    named = [(n, m) for n, m in model.named_modules() if n]

    def make(name: str) -> Any:
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in kinds:
                other = "none" if out is None else "dict" if isinstance(out, dict) else "tuple"
                kinds[name] = "tensor" if isinstance(out, torch.Tensor) else other
                if kinds[name] == "tensor" and (out.ndim == 0 or int(out.shape[0]) != 1):
                    kinds[name] = "not per image"  # first axis is not the batch: e.g. windowed attention
                shapes[name] = tuple(int(d) for d in out.shape[1:]) if kinds[name] == "tensor" else None

        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in named]
    try:
        zero_forward(model, input_size)
    finally:
        for h in handles:
            h.remove()
    return [ModuleRecord(n, type(m).__name__, shapes.get(n), calls.get(n, 0), kinds.get(n, "none")) for n, m in named]


def list_modules(
    name: str, img_size: tuple[int, int] | None = None, output_stride: int | None = None
) -> tuple[Any, DataConfig, list[ModuleRecord]]:
    """``(model, data config, every module with its output shape)``, built on the meta device and
    traced (no weights, no downloads); a real CPU model where meta tensors fail."""
    import torch

    check_model_name(name)
    build = functools.partial(create_checked, name, img_size=img_size, output_stride=output_stride, pretrained=False)
    with torch.device("meta"):
        model = build()
    data = resolve_data_config(model, img_size)
    check_tiling(name, model, data.input_size[1:])
    model, records = on_meta(name, model, build, lambda m: trace_modules(m, data.input_size), data.input_size)
    return model, data, records


# --------------------------------------------------------------------------- layers


def _unknown(model: str, wanted: str, names: Sequence[str]) -> UsageError:
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if n.endswith("." + wanted) or n.startswith(wanted + ".")][:5]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return UsageError(
        f"{model} has no module {wanted!r}{hint} (`featdump inspect {model} --all-modules` lists them all)"
    )


def token_grid(num_patch_tokens: int, model: Any, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """Rows x columns of the patch tokens: the model's patch grid, else the grid with the image's aspect."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and len(grid) == 2 and int(grid[0]) * int(grid[1]) == num_patch_tokens:
        return int(grid[0]), int(grid[1])
    h, w = input_hw
    if num_patch_tokens <= 0:
        return None
    rows = round(math.sqrt(num_patch_tokens * h / w))
    for r in (rows, rows - 1, rows + 1):
        if r > 0 and num_patch_tokens % r == 0:
            c = num_patch_tokens // r
            if abs(r / c - h / w) < 0.25 * (h / w):
                return r, c
    return None


def _layer(model_name: str, model: Any, rec: ModuleRecord, data: DataConfig, tokens: str) -> LayerInfo:
    shown = f"(`featdump inspect {model_name} --all-modules` shows output shapes)"
    windows = "tensor whose first axis is not the image batch (e.g. attention over windows)"
    what = windows if rec.output == "not per image" else f"{rec.output}, not one tensor"
    why = (
        f"never runs in the forward pass; pick one that does {shown}" if rec.calls == 0
        else f"runs {rec.calls} times per image, so its output is ambiguous; pick a module that runs once" if rec.calls > 1
        else f"returns a {what}; pick another module {shown}"
    )
    if rec.calls != 1 or rec.shape is None:
        raise UsageError(f"module {rec.name!r} of {model_name} {why}")
    _, in_h, in_w = data.input_size
    shape = rec.shape
    if len(shape) == 3:
        layout = guess_layout(model, shape)
        c, h, w = chw(shape, layout)
        return LayerInfo(rec.name, rec.name, -1, c, max(1, in_h // h), (c, h, w), layout)
    if len(shape) == 2:
        t, d = shape
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        prefix = prefix if prefix < t else 0
        grid = token_grid(t - prefix, model, (in_h, in_w))
        reduction = max(1, in_h // grid[0]) if grid else 0
        attrs: dict[str, Any] = {"num_prefix_tokens": prefix, "tokens": tokens}
        if grid:
            attrs["grid"] = [grid[0], grid[1]]
        if tokens in ("map", "both"):
            if grid is None:
                raise UsageError(
                    f"--tokens {tokens}: cannot lay out the {t - prefix} patch tokens of {rec.name!r} as a grid; "
                    "use --tokens seq"
                )
            attrs["num_prefix_tokens"] = prefix if tokens == "both" else 0
            attrs["dropped_prefix_tokens"] = prefix
            return LayerInfo(rec.name, rec.name, -1, d, reduction, (d, grid[0], grid[1]), "NCHW", attrs)
        return LayerInfo(rec.name, rec.name, -1, d, reduction, (t, d), "NLC", attrs)
    if len(shape) == 1:
        return LayerInfo(rec.name, rec.name, -1, shape[0], 0, shape, "NC", {"layout": "NC"})
    raise UsageError(
        f"module {rec.name!r} of {model_name} outputs shape {('N', *shape)}; "
        "featdump stores (N,C,H,W), (N,T,D) or (N,D)"
    )


def describe_modules(
    name: str,
    layers: Sequence[str],
    img_size: tuple[int, int] | None = None,
    output_stride: int | None = None,
    tokens: str = "seq",
) -> Description:
    """Layer description for named modules (meta device: no weights, no downloads)."""
    tokens = check_choice("tokens", str(tokens).lower(), TOKENS)
    model, data, records = list_modules(name, img_size, output_stride)
    by_name = {r.name: r for r in records}
    infos = []
    for wanted in layers:
        if wanted not in by_name:
            raise _unknown(name, wanted, list(by_name))
        infos.append(_layer(name, model, by_name[wanted], data, tokens))
        infos.extend(_prefix_layer(infos[-1]))  # --tokens both
    return Description(name, infos, data, 0, None, output_stride)


def _prefix_layer(layer: LayerInfo) -> list[LayerInfo]:
    """``--tokens both``: the ``(P, D)`` prefix tokens of a token layer laid out as a map (none
    when the layer is not a token map or the model has no prefix tokens). They are not spatial,
    so ``--pool`` leaves them as they are (timm pools the patch tokens only)."""
    p = int(layer.attrs.get("dropped_prefix_tokens", 0) or 0)
    if layer.attrs.get("tokens") != "both" or p <= 0:
        return []
    d = layer.channels
    attrs = {"tokens": "both", "part": "prefix", "num_prefix_tokens": p, "of": layer.name, "layout": "NTD", "pool": "none"}
    return [LayerInfo(f"{layer.name}.prefix", layer.module, -1, d, 0, (p, d), "NLC", attrs)]


# --------------------------------------------------------------------------- the hooked model


class _Done(Exception):
    """Raised by the last hook: the rest of the forward pass is not needed."""


def hooked(model: Any, layers: Sequence[LayerInfo]) -> Any:
    """``model`` (with weights, in eval mode) wrapped so that it returns the named modules' outputs."""
    import torch

    class HookedModel(torch.nn.Module):
        """The named modules' outputs, in order: cloned as they appear (a later ``ReLU(inplace=True)``
        cannot change them); the forward pass stops after the last one."""

        def __init__(self, model: Any, layers: Sequence[LayerInfo]) -> None:
            super().__init__()
            self.model = model
            self.layers = list(layers)
            self.modules_by_name = dict(model.named_modules())
            self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

        def _convert(self, out: Any, layer: LayerInfo) -> Any:
            if layer.attrs.get("part") == "prefix":
                return out[:, : int(layer.attrs["num_prefix_tokens"])]
            if layer.attrs.get("tokens") in ("map", "both") and out.ndim == 3:
                drop = int(layer.attrs.get("dropped_prefix_tokens", 0))
                d, h, w = layer.shape
                return out[:, drop:].transpose(1, 2).reshape(out.shape[0], d, h, w)
            return out

        def forward(self, x: Any) -> list[Any]:
            captured: dict[str, Any] = {}
            modules = list(dict.fromkeys(layer.module for layer in self.layers))  # --tokens both: one module, two layers
            wanted = len(modules)

            def make(name: str) -> Any:
                def hook(_mod: Any, _inp: Any, out: Any) -> None:
                    if name not in captured:
                        captured[name] = out.clone()
                    if len(captured) == wanted:
                        raise _Done

                return hook

            handles = [self.modules_by_name[m].register_forward_hook(make(m)) for m in modules]
            try:
                self.model(x)
            except _Done:
                pass
            finally:
                for h in handles:
                    h.remove()
            return [self._convert(captured[layer.module], layer) for layer in self.layers]

    return HookedModel(model, layers).eval()
