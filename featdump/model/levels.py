"""Feature levels (``--out-indices``): timm's ``features_only`` models, their levels and indices."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.model.create import (
    HUB_PREFIXES,
    check_model_name,
    check_tiling,
    create_checked,
    on_meta,
    resolve_data_config,
    stride_error,
    zero_forward,
)
from featdump.model.layers import Description, LayerInfo, at_grid, chw, guess_layout, size_unit, to_unit
from featdump.model.weights import why_no_download


def features_model(
    name: str,
    *,
    out_indices: tuple[int, ...] | None,
    output_stride: int | None,
    img_size: tuple[int, int] | None,
    pretrained: bool = False,
    dynamic: bool = False,
    **kwargs: Any,
) -> Any:
    """timm's ``features_only`` model (``kwargs``: e.g. ``pretrained_cfg_overlay``); ``dynamic``: at
    any input size (a size mode: built at the model's own size, timm's ``dynamic_img_size``)."""
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    try:
        return create_checked(name, img_size=None if dynamic else img_size, output_stride=output_stride,
                              pretrained=pretrained, dynamic=dynamic, features_only=True, **kwargs)  # fmt: skip
    except RuntimeError as exc:
        if "features_only" in str(exc) or "feature" in str(exc).lower() and "not" in str(exc).lower():
            raise UsageError(
                f"{name} has no feature levels in timm ({exc}); pick module names with --layers instead"
            ) from None
        raise


def normalize_indices(name: str, indices: Sequence[int] | None, levels: int, modules: Sequence[str]) -> tuple[int, ...] | None:
    """Negative indices count from the end (as in timm); out of range or twice exits 2; none means
    every level. The result is in model order (as timm returns the levels), not in the order given."""
    if indices is None:
        return None
    if not indices:  # --out-indices all
        return tuple(range(levels))
    bad = [i for i in indices if not -levels <= i < levels]
    if bad:
        listing = ", ".join(f"{i}={m}" for i, m in enumerate(modules))
        raise UsageError(
            f"--out-indices {','.join(map(str, bad))} out of range for {name}: valid levels are "
            f"0..{levels - 1} (or -{levels}..-1): {listing}"
        )
    resolved = [i % levels for i in indices]
    twice = sorted({i for i in resolved if resolved.count(i) > 1})
    if twice:
        raise UsageError(
            f"--out-indices names level {twice[0]} ({modules[twice[0]]}) twice (negatives count from the end)"
        )
    return tuple(sorted(resolved))  # as timm returns them, so that output i is labelled with level i


def describe_layers(model: Any, input_size: tuple[int, int, int]) -> list[LayerInfo]:
    """Run a shape-only forward (on the model's device: meta tensors, no arithmetic) and describe outputs."""
    info = model.feature_info
    layers: list[LayerInfo] = []
    seen: set[str] = set()
    for idx, out in zip(info.out_indices, zero_forward(model, input_size), strict=True):
        module = str(info.info[idx]["module"])
        channels = int(info.info[idx]["num_chs"])
        per_image = tuple(int(d) for d in out.shape[1:])
        layout = guess_layout(model, per_image, channels)
        name = module if module not in seen else f"{module}#{idx}"
        seen.add(name)
        layers.append(LayerInfo(name, module, int(idx), channels, int(info.info[idx]["reduction"]), chw(per_image, layout), layout))
    return layers


def check_varying(name: str, model: Any, layers: list[LayerInfo]) -> None:
    """A size mode needs a model that takes inputs of any shape: a shape-only forward at 2x3 and
    3x2 units must give every level the grid of its input, else a usage error naming the model."""
    unit = size_unit(layers)
    for h, w in ((2 * unit, 3 * unit), (3 * unit, 2 * unit)):
        want = at_grid(layers, h, w)
        try:
            got = [chw(tuple(o.shape[1:]), x.layout) for o, x in zip(zero_forward(model, (3, h, w)), layers, strict=True)]
            ok = all(g == x.shape for g, x in zip(got, want, strict=True) if len(x.shape) == 3)
        except Exception:  # noqa: BLE001 - any refusal of the shape is the answer
            ok = False
        if not ok:
            raise UsageError(
                f"{name} cannot take images of varying shapes (a {h}x{w} input fails or gives other grids); "
                "use a fixed --img-size (e.g. 224) with it"
            )


def describe_levels(name: str, out_indices: Sequence[int] | None = None, output_stride: int | None = None,
                    img_size: Sequence[int] | None = None, dynamic: bool = False) -> Description:  # fmt: skip
    """Feature levels and data config of a backbone; builds on the meta device (no weights, no
    downloads). ``dynamic``: for a size mode, checked to take inputs of varying shapes."""
    hashable = [None if v is None else tuple(v) for v in (out_indices, img_size)]
    return described_levels(name, hashable[0], output_stride, hashable[1], dynamic)


@functools.lru_cache(maxsize=4)  # a run's space check and its model load; job.py clears it for each run
def described_levels(name: str, out_indices: Any, output_stride: int | None, img_size: Any, dynamic: bool) -> Description:
    import torch

    check_model_name(name)
    try:
        with torch.device("meta"):
            probe = features_model(name, out_indices=None, output_stride=None, img_size=img_size)
    except Exception as exc:  # noqa: BLE001 - hf-hub:/local-dir: names read their config from the hub or disk
        if isinstance(exc, (UsageError, TypeError, AssertionError)) or not name.startswith(HUB_PREFIXES):
            raise
        raise FeatdumpError(
            f"cannot read the model config of {name} ({why_no_download(exc)}); run `featdump fetch {name}` where there is "
            "internet, or use a plain timm model name"
        ) from None
    levels = len(probe.feature_info.info)
    indices = normalize_indices(name, out_indices, levels, [str(d["module"]) for d in probe.feature_info.info])
    build = functools.partial(
        features_model, name, out_indices=indices, output_stride=output_stride, img_size=img_size, dynamic=dynamic
    )
    with torch.device("meta"):
        model = build()
    data = resolve_data_config(model, img_size)
    if not dynamic:
        check_tiling(name, model, data.input_size[1:])
    size = resolve_data_config(model, None).input_size if dynamic else data.input_size  # a size mode: the model's own first
    model, layers = on_meta(name, model, build, lambda m: describe_layers(m, size), size)
    if dynamic:
        check_varying(name, model, layers)
        side = to_unit(data.input_size[-1], size_unit(layers))  # the nominal square, its sides rounded as each image's are
        layers = at_grid(layers, side, side)  # an upper bound for the space check and inspect
    biggest = max((layer.reduction for layer in layers), default=0)
    if output_stride is not None and biggest > output_stride:
        raise stride_error(name, output_stride, f"its feature levels still reach stride {biggest}")
    return Description(name, layers, data, levels, indices, output_stride)
