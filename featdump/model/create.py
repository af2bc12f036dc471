"""Building timm models: names checked (with close matches), ``img_size`` and ``output_stride``
passed where the model takes them, and refusals turned into one usage error each."""

from __future__ import annotations

import difflib
from typing import Any

from featdump.errors import UsageError
from featdump.model.layers import DataConfig

HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


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


def _create(name: str, *, img_size: tuple[int, int] | None, **kwargs: Any) -> Any:
    """timm.create_model, passing ``img_size`` only to models that take one (ViTs and kin)."""
    import timm

    if img_size is not None:
        try:
            return timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)


def _stride_error(name: str, stride: int, detail: str = "") -> UsageError:
    why = f" ({detail})" if detail else ""
    return UsageError(
        f"{name} cannot run at --output-stride {stride}{why}; output stride works for models that dilate "
        "their late stages (e.g. resnet*, resnext*, regnet*, efficientnet*, mobilenetv3*, convnext*), "
        "with 8 or 16 (32 is their default); `featdump models` marks which ones"
    )


def create_checked(name: str, *, img_size: tuple[int, int] | None, output_stride: int | None, **kwargs: Any) -> Any:
    """``timm.create_model`` with ``--output-stride`` refusals turned into one usage error."""
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    try:
        return _create(name, img_size=img_size, **kwargs)
    except TypeError as exc:
        if output_stride is not None and "output_stride" in str(exc):
            raise _stride_error(name, output_stride, "the model takes no output_stride") from None
        raise
    except AssertionError as exc:
        if output_stride is not None:
            raise _stride_error(name, output_stride, str(exc) or "rejected by timm") from None
        raise


def resolve_data_config(model: Any, img_size: tuple[int, int] | None) -> DataConfig:
    from timm.data import resolve_data_config as timm_resolve

    args: dict[str, Any] = {}
    if img_size is not None:
        args["input_size"] = (3, img_size[0], img_size[1])
    return DataConfig.from_timm(timm_resolve(args, model=model))
