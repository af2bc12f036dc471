"""The model package's front door: :func:`describe` (no weights) and :func:`load_backbone` (weights).

Feature levels (:mod:`featdump.model.levels`) or named modules (:mod:`featdump.model.modules`,
``--layers``), with weights from one decision (:mod:`featdump.model.weights`), described as data
(:mod:`featdump.model.layers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featdump.errors import UsageError
from featdump.model.create import resolve_data_config
from featdump.model.layers import Backbone, Description
from featdump.model.levels import describe_levels, features_model
from featdump.model.modules import describe_modules, load_module_backbone
from featdump.model.weights import choose_weights, create_with_weights
from featdump.options import ExtractConfig


def describe(
    name: str,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    img_size: tuple[int, int] | None = None,
    layers: Sequence[str] | None = None,
    tokens: str = "seq",
) -> Description:
    """Layers and data config of a backbone; builds on the meta device (no weights, no downloads).

    ``layers`` (module names) replaces the feature levels: see :mod:`featdump.model.modules`.
    """
    if layers:
        return describe_modules(name, layers, img_size, output_stride, tokens)
    _levels_take_no_prefix(tokens)
    return describe_levels(name, out_indices, output_stride, img_size)


def _levels_take_no_prefix(tokens: str) -> None:
    """Feature levels (timm's ``features_only``) are maps without prefix tokens: ``--tokens both``
    would store the same as ``map``, so it asks for the modules by name instead."""
    if tokens == "both":
        raise UsageError(
            "--tokens both stores a token layer's prefix tokens (CLS, registers) beside its patch map, "
            "which timm's feature levels drop: name the blocks with --layers (see inspect --all-modules)"
        )


def load_backbone(
    name: str,
    *,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    img_size: tuple[int, int] | None = None,
    pretrained: bool = True,
    checkpoint: str | None = None,
    layers: Sequence[str] | None = None,
    tokens: str = "seq",
) -> Backbone:
    """The real model with weights from a checkpoint, the hub (pretrained) or random init, in eval mode."""
    if layers:
        return load_module_backbone(
            name, layers, tokens=tokens, output_stride=output_stride, img_size=img_size,
            pretrained=pretrained, checkpoint=checkpoint,
        )  # fmt: skip
    _levels_take_no_prefix(tokens)
    desc = describe_levels(name, out_indices, output_stride, img_size)
    indices = desc.out_indices
    choice = choose_weights(name, pretrained=pretrained, checkpoint=checkpoint)

    def create(**kwargs: Any) -> Any:
        return features_model(name, out_indices=indices, output_stride=output_stride, img_size=img_size, **kwargs)

    model, weights = create_with_weights(name, choice, create)
    model.eval()
    return Backbone(name, model, desc.layers, resolve_data_config(model, img_size), indices, output_stride, weights)


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
        )
    backbone.data = backbone.data.with_options(cfg)  # --crop-mode, --crop-pct, --interpolation
    return backbone
