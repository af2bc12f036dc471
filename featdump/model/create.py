"""Building timm models: names checked (with close matches), ``img_size`` and ``output_stride``
passed where the model takes them, and refusals turned into one usage error each."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from featdump.errors import UsageError
from featdump.model.layers import DataConfig
from featdump.text import first_line

HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
T = TypeVar("T")


def check_model_name(name: str) -> None:
    """Exit 2 with close matches when timm has no such model (``resnet50.a1_in1k`` tags allowed)."""
    import timm

    if name.startswith(HUB_PREFIXES):
        return  # timm resolves these itself (the config may come from the hub cache)
    arch, _, tag = name.partition(".")
    if timm.is_model(arch):
        if tag and name not in timm.list_pretrained(name):
            tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
            known = f"its tags: {', '.join(tags[:12])}" if tags else "it has no pretrained tags"
            raise UsageError(f"unknown pretrained tag {tag!r} for {arch}; {known}")
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if not close:
        close = [n for n in names if name.lower().replace("-", "_") in n][:5]
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see `featdump models PATTERN` for the names"
    raise UsageError(f"unknown model {name!r}{hint}")


def stride_error(name: str, stride: int, detail: str = "") -> UsageError:
    why = f" ({detail})" if detail else ""
    return UsageError(
        f"{name} cannot run at --output-stride {stride}{why}; output stride works for models that dilate "
        "their late stages (e.g. resnet*, resnext*, regnet*, efficientnet*, mobilenetv3*, convnext*), "
        "with 8 or 16 (32 is their default); `featdump models` marks which ones"
    )


def create_checked(
    name: str, *, img_size: tuple[int, int] | None, output_stride: int | None, dynamic: bool = False, **kwargs: Any
) -> Any:
    """``timm.create_model``, passing ``img_size`` (and ``dynamic_img_size`` for a size mode) only to
    models that take them (ViTs and kin), with ``--output-stride`` refusals turned into one usage error."""
    import timm

    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    sized = {k: v for k, v in (("dynamic_img_size", dynamic or None), ("img_size", img_size)) if v is not None}
    try:
        while True:
            try:
                return timm.create_model(name, **sized, **kwargs)
            except TypeError as exc:
                refused = next((k for k in sized if f"'{k}'" in str(exc)), None)
                if refused is None:
                    raise
                del sized[refused]  # a model without it (CNNs; NaFlex ViTs take any size anyway)
    except TypeError as exc:
        if output_stride is not None and "output_stride" in str(exc):
            raise stride_error(name, output_stride, "the model takes no output_stride") from None
        raise
    except AssertionError as exc:
        if output_stride is not None:
            raise stride_error(name, output_stride, str(exc) or "rejected by timm") from None
        raise


def resolve_data_config(model: Any, img_size: tuple[int, int] | None) -> DataConfig:
    from timm.data import resolve_data_config as timm_resolve

    args = {"input_size": (3, *img_size)} if img_size is not None else {}
    return DataConfig.from_timm(timm_resolve(args, model=model))


def cannot_run(name: str, model: Any, input_size: Sequence[int], exc: BaseException) -> BaseException:
    """A usage error for a model whose forward fails at ``input_size`` (C, H, W) but not at its own
    size (levit at 200: attention biases built for 224's grids); else ``exc`` itself."""
    own = resolve_data_config(model, None).input_size
    if isinstance(exc, NotImplementedError) or tuple(input_size) == tuple(own):
        return exc  # not the size: the model fails at its own too
    return UsageError(f"{name} cannot run at {input_size[1]}x{input_size[2]} ({first_line(exc)}); "
                      f"give another --img-size or --tiles size, e.g. its own {own[1]}")  # fmt: skip


def zero_forward(model: Any, input_size: Sequence[int]) -> Any:
    """The model's outputs (a dict's values) for one zero image of ``input_size`` (C, H, W), on the model's device."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        outs = model(torch.zeros((1, *input_size), device=device))
    return list(outs.values()) if isinstance(outs, dict) else outs


def on_meta(
    name: str, model: Any, build: Callable[[], Any], run: Callable[[Any], T], input_size: Sequence[int]
) -> tuple[Any, T]:
    """``(model, run(model))`` for a model built on the meta device (shapes only); where meta tensors
    fail, for a real CPU model from ``build`` instead (its random init leaves the caller's seed alone)."""
    import torch

    try:
        return model, run(model.eval())
    except Exception:  # noqa: BLE001 - some models cannot run on meta tensors
        with torch.random.fork_rng(devices=[]):
            model = build().eval()
        try:
            return model, run(model)
        except RuntimeError as exc:
            raise cannot_run(name, model, input_size, exc) from None


def check_tiling(name: str, model: Any, input_hw: tuple[int, int]) -> None:
    """A patch-embedding model at an input size its patches do not tile: a usage error naming the
    nearest valid sizes (timm would silently drop the leftover pixels). Such models are built at a fixed
    ``img_size``; one built with ``dynamic_img_pad`` pads the input itself and is accepted."""
    embed = next((m for n, m in model.named_modules() if n.split(".")[-1] == "patch_embed"), None)
    patch = getattr(embed, "patch_size", None)
    if embed is None or patch is None or getattr(embed, "dynamic_img_pad", False):
        return
    ph, pw = (int(patch[0]), int(patch[-1])) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))
    h, w = (int(v) for v in input_hw)
    if h % ph == 0 and w % pw == 0:
        return

    def near(size: int, p: int) -> list[int]:
        return sorted({v for v in ((size // p) * p, (size // p + 1) * p) if v >= p})

    hs = near(h, ph) if h % ph else [h]
    ws = near(w, pw) if w % pw else [w]
    square = h == w and ph == pw
    valid = " or ".join(str(v) for v in hs) if square else " or ".join(f"{a}x{b}" for a in hs for b in ws)
    raise UsageError(
        f"the input size {h}x{w} (--img-size or --tiles) is not a multiple of {name}'s patch size {ph}x{pw} (timm would drop the "
        f"leftover pixels); nearest valid sizes: {valid}"
    )
