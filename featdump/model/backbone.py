"""The model package's front door: :func:`describe` (no weights) and :func:`load_backbone` (weights),
for feature levels (model/levels.py) or named modules (model/modules.py, ``--layers``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from featdump.errors import UsageError
from featdump.model.create import create_checked, resolve_data_config
from featdump.model.layers import Backbone, Description, ResizeToUnit, at_grid, mark_ragged, size_unit
from featdump.model.levels import check_varying, describe_levels, features_model
from featdump.model.modules import describe_modules, hooked
from featdump.model.weights import choose_weights, create_with_weights
from featdump.options import ExtractConfig
from featdump.values import ImgSize, size_mode_text

_Described = TypeVar("_Described", Description, Backbone)


def describe(
    name: str,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    img_size: ImgSize | None = None,
    layers: Sequence[str] | None = None,
    tokens: str = "seq",
    max_side: int = 2048,
) -> Description:
    """Layers and data config of a backbone; builds on the meta device (no weights, no downloads).
    ``layers`` (module names) replaces the feature levels: see :mod:`featdump.model.modules`."""
    fixed = _nominal(img_size, max_side)
    desc = _describe(name, out_indices, output_stride, fixed, fixed != img_size, layers, tokens)
    return _size_mode(img_size, max_side, desc)


def _size_mode(img_size: ImgSize | None, max_side: int, described: _Described) -> _Described:
    """A size mode's description or backbone: spatial layers marked ragged, mode and unit in the data
    config; a fixed size's as it is."""
    if img_size is None or not isinstance(img_size[0], str):
        return described
    layers = described.layers
    if any(x.layout == "NLC" or x.attrs.get("tokens") for x in layers):  # --tokens map too: reshaped at one grid
        raise UsageError(
            f"--img-size {size_mode_text(img_size)} stores maps at each image's own grid, which token layers "
            "of --layers cannot follow: take this model's feature levels (--out-indices) instead"
        )
    data = dataclasses.replace(described.data, size_mode=img_size, unit=size_unit(layers), max_side=max_side)
    return dataclasses.replace(described, layers=mark_ragged(layers), data=data)


def for_image(desc: Description, height: int, width: int) -> Description:
    """A size mode's description for one image size: the input it is resized to (``input_size``) and
    each spatial layer's grid there (what ``inspect`` shows for an example photo)."""
    d = desc.data
    assert d.size_mode is not None
    h, w = ResizeToUnit(d.size_mode, d.unit, d.max_side, d.interpolation).shape_for(height, width)
    return dataclasses.replace(desc, layers=at_grid(desc.layers, h, w), data=dataclasses.replace(d, input_size=(3, h, w)))


def _nominal(img_size: ImgSize | None, max_side: int) -> tuple[int, int] | None:
    """The square a size mode is described at (an upper bound of ``long:L`` and ``native``)."""
    if img_size is None or not isinstance(img_size[0], str):
        return img_size
    side = max_side if img_size[0] == "native" else int(img_size[1])
    return (side, side)


def _describe(
    name: str,
    out_indices: Sequence[int] | None,
    output_stride: int | None,
    fixed: tuple[int, int] | None,
    dynamic: bool,
    layers: Sequence[str] | None,
    tokens: str,
) -> Description:
    """The named modules' description, else the feature levels' (``fixed``: the size they are built at)."""
    if layers:
        return describe_modules(name, layers, fixed, output_stride, tokens)
    if tokens == "both":  # feature levels are maps without prefix tokens: it would store the same as ``map``
        raise UsageError(
            "--tokens both stores a token layer's prefix tokens (CLS, registers) beside its patch map, "
            "which timm's feature levels drop: name the blocks with --layers (see inspect --all-modules)"
        )
    return describe_levels(name, out_indices, output_stride, fixed, dynamic=dynamic)


def load_backbone(
    name: str,
    *,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    img_size: ImgSize | None = None,
    pretrained: bool = True,
    checkpoint: str | None = None,
    layers: Sequence[str] | None = None,
    tokens: str = "seq",
    max_side: int = 2048,
) -> Backbone:
    """The real model with weights from a checkpoint, the hub (pretrained) or random init, in eval mode."""
    fixed = _nominal(img_size, max_side)
    dynamic = fixed != img_size  # a size mode
    desc = _describe(name, out_indices, output_stride, fixed, dynamic, layers, tokens)
    indices = desc.out_indices
    choice = choose_weights(name, pretrained=pretrained, checkpoint=checkpoint)

    def create(**kwargs: Any) -> Any:
        if layers:  # the full model: hooks take the named modules' outputs
            return create_checked(name, img_size=fixed, output_stride=output_stride, **kwargs)
        return features_model(name, out_indices=indices, output_stride=output_stride, img_size=fixed, dynamic=dynamic, **kwargs)

    model, weights = create_with_weights(name, choice, create, headless_retry=bool(layers))
    model.eval()
    data = resolve_data_config(model, fixed)
    if layers:
        model = hooked(model, desc.layers)
        if dynamic:  # the hooked modules must follow each input's shape (CNNs do, ViTs do not)
            _size_mode(img_size, max_side, desc)  # a token layer is refused as one first
            check_varying(name, model, desc.layers)
    backbone = Backbone(name, model, list(desc.layers), data, indices, output_stride, weights)
    return _size_mode(img_size, max_side, backbone)


def backbone_for(cfg: ExtractConfig) -> Backbone:
    """The backbone of a run's options; ``--no-pretrained`` gets the same random weights in every
    run (seed 0, so ``--resume`` matches) without touching the caller's global random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        if not cfg.pretrained and not cfg.checkpoint:
            torch.manual_seed(0)
        backbone = load_backbone(
            cfg.model,
            out_indices=cfg.out_indices,
            output_stride=cfg.output_stride,
            img_size=cfg.img_size,
            pretrained=cfg.pretrained,
            checkpoint=cfg.checkpoint,
            layers=cfg.layers,
            tokens=cfg.tokens,
            max_side=cfg.max_side,
        )
    backbone.data = backbone.data.with_options(cfg)  # --crop-mode, --crop-pct, --interpolation
    return backbone
