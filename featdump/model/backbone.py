"""timm model creation, weights (pretrained / checkpoint / random) and the layer description.

The layer description (:class:`LayerInfo`) is data: ``inspect``, the writer's attributes and the
summary table all render the same objects.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError

DTYPE_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class LayerInfo:
    """One stored output: a feature level (``index`` >= 0) or a named module (``index`` = -1)."""

    name: str
    module: str
    index: int
    channels: int
    reduction: int
    shape: tuple[int, ...]  # per image, as stored without pooling: (C, H, W) or (T, D)
    layout: str = "NCHW"  # what the model returns: NCHW, NHWC (permuted on store) or NLC (tokens)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)

    def stored_shape(self, pool: str = "none") -> tuple[int, ...]:
        if pool == "none":
            return self.shape
        return (self.shape[-1],) if self.layout == "NLC" else (self.shape[0],)

    def bytes_per_image(self, dtype: str = "float32", pool: str = "none") -> int:
        n = 1
        for d in self.stored_shape(pool):
            n *= d
        return n * DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class DataConfig:
    """timm's resolved evaluation data config for the model at the chosen input size."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    crop_mode: str

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

    def as_timm(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    def transform(self) -> Any:
        """Exactly timm's evaluation transform for this config."""
        from timm.data import create_transform

        return create_transform(**self.as_timm(), is_training=False)


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


# --------------------------------------------------------------------------- names


def check_model_name(name: str) -> None:
    """Exit 2 with close matches when timm has no such model (``resnet50.a1_in1k`` tags allowed)."""
    import timm

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
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


# --------------------------------------------------------------------------- creation


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


def _features_model(
    name: str,
    *,
    out_indices: tuple[int, ...] | None,
    output_stride: int | None,
    img_size: tuple[int, int] | None,
    pretrained: bool = False,
    state_dict: dict[str, Any] | None = None,
) -> Any:
    kwargs: dict[str, Any] = {"features_only": True}
    if out_indices is not None:
        kwargs["out_indices"] = out_indices
    if state_dict is not None:
        kwargs["pretrained_cfg_overlay"] = {"state_dict": state_dict}
        pretrained = True
    try:
        return create_checked(name, img_size=img_size, output_stride=output_stride, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "features_only" in str(exc) or "feature" in str(exc).lower() and "not" in str(exc).lower():
            raise UsageError(
                f"{name} has no feature levels in timm ({exc}); pick module names with --layers instead"
            ) from None
        raise


def num_levels(name: str) -> int:
    """How many feature levels the model exposes (``out_indices`` range over these)."""
    import torch

    with torch.device("meta"):
        model = _features_model(name, out_indices=None, output_stride=None, img_size=None)
    return len(model.feature_info.info)


def normalize_indices(name: str, indices: Sequence[int] | None, levels: int, modules: Sequence[str]) -> tuple[int, ...] | None:
    """Negative indices count from the end (timm semantics); out of range or twice exits 2.

    The result is in model order (the order timm returns the levels in), not in the order given.
    """
    if indices is None:
        return None
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
    # timm returns levels in model order whatever order they were asked in: keep that order, so
    # that output i is labelled with level i.
    return tuple(sorted(resolved))


def _layout(model: Any, out: Any, channels: int) -> str:
    fmt = str(getattr(model, "output_fmt", "NCHW")).split(".")[-1].upper()
    if out.ndim == 3:
        return "NLC"
    if out.ndim == 4 and fmt == "NHWC" and out.shape[-1] == channels:
        return "NHWC"
    if out.ndim == 4 and out.shape[1] != channels and out.shape[-1] == channels:
        return "NHWC"
    return "NCHW"


def _shape(out: Any, layout: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in out.shape[1:])
    if layout == "NHWC":
        h, w, c = dims
        return (c, h, w)
    return dims


def describe_layers(model: Any, input_size: tuple[int, int, int]) -> list[LayerInfo]:
    """Run a shape-only forward (meta tensors; a real one on CPU if the model cannot) and describe outputs."""
    import torch

    info = model.feature_info
    indices = list(info.out_indices)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    with torch.inference_mode():
        x = torch.zeros((1, *input_size), device=device)
        try:
            outs = model(x)
        except Exception:
            if device.type != "meta":
                raise
            raise _MetaFailed() from None
    if isinstance(outs, dict):
        outs = list(outs.values())
    layers: list[LayerInfo] = []
    seen: set[str] = set()
    for idx, out in zip(indices, outs):
        module = str(info.info[idx]["module"])
        channels = int(info.info[idx]["num_chs"])
        layout = _layout(model, out, channels)
        name = module if module not in seen else f"{module}#{idx}"
        seen.add(name)
        layers.append(
            LayerInfo(
                name=name,
                module=module,
                index=int(idx),
                channels=channels,
                reduction=int(info.info[idx]["reduction"]),
                shape=_shape(out, layout),
                layout=layout,
            )
        )
    return layers


class _MetaFailed(Exception):
    pass


@dataclass(frozen=True)
class Description:
    """What ``inspect`` shows: layers and data config, computed without weights or downloads."""

    name: str
    layers: list[LayerInfo]
    data: DataConfig
    num_levels: int
    out_indices: tuple[int, ...] | None
    output_stride: int | None


def resolve_data_config(model: Any, img_size: tuple[int, int] | None) -> DataConfig:
    from timm.data import resolve_data_config as timm_resolve

    args: dict[str, Any] = {}
    if img_size is not None:
        args["input_size"] = (3, img_size[0], img_size[1])
    return DataConfig.from_timm(timm_resolve(args, model=model))


def _prepare(
    name: str,
    out_indices: Sequence[int] | None,
    output_stride: int | None,
    img_size: tuple[int, int] | None,
) -> tuple[int, list[str], tuple[int, ...] | None]:
    import torch

    check_model_name(name)
    try:
        with torch.device("meta"):
            probe = _features_model(name, out_indices=None, output_stride=None, img_size=img_size)
    except (UsageError, TypeError, AssertionError):
        raise
    except Exception as exc:  # noqa: BLE001 - hf-hub:/local-dir: names read their config from the hub or disk
        if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            raise FeatdumpError(
                f"cannot read the model config of {name} ({why_no_download(exc)}); run `featdump fetch {name}` where there is "
                "internet, or use a plain timm model name"
            ) from None
        raise
    levels = len(probe.feature_info.info)
    modules = [str(d["module"]) for d in probe.feature_info.info]
    return levels, modules, normalize_indices(name, out_indices, levels, modules)


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
    import torch

    if layers:
        from featdump.model.modules import describe_modules

        return describe_modules(name, layers, img_size, output_stride, tokens)
    levels, _, indices = _prepare(name, out_indices, output_stride, img_size)
    with torch.device("meta"):
        model = _features_model(name, out_indices=indices, output_stride=output_stride, img_size=img_size)
    data = resolve_data_config(model, img_size)
    try:
        layers = describe_layers(model, data.input_size)
    except _MetaFailed:
        model = _features_model(name, out_indices=indices, output_stride=output_stride, img_size=img_size)
        layers = describe_layers(model.eval(), data.input_size)
    _check_stride(name, layers, output_stride)
    return Description(name, layers, data, levels, indices, output_stride)


def _check_stride(name: str, layers: Sequence[LayerInfo], output_stride: int | None) -> None:
    if output_stride is None or not layers:
        return
    biggest = max(layer.reduction for layer in layers)
    if biggest > output_stride:
        raise _stride_error(name, output_stride, f"its feature levels still reach stride {biggest}")


# --------------------------------------------------------------------------- weights


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unwrap(obj: Any) -> dict[str, Any]:
    """Accept ``{'state_dict': …}`` / ``{'model': …}`` nesting and ``module.`` prefixes."""
    import torch

    for _ in range(4):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "model_state_dict", "module"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
        else:
            break
    if not isinstance(obj, dict) or not obj:
        raise UsageError("checkpoint holds no state dict (expected tensors keyed by timm parameter names)")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UsageError("checkpoint holds no tensors (expected tensors keyed by timm parameter names)")
    for prefix in ("module.", "_orig_mod.", "model."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A state dict from safetensors or a torch file, never running pickled code."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"checkpoint not found: {p}")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(p), device="cpu"))
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot read safetensors checkpoint {p}: {exc}") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported pickle content"
        raise UsageError(
            f"refused checkpoint {p}: loading it would run code from the file ({first[:160]}); "
            "convert it to .safetensors in an environment you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read checkpoint {p}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    return _unwrap(obj)


def check_state_dict(name: str, state_dict: dict[str, Any]) -> None:
    """Compare a checkpoint with the full timm model (built on the meta device); exit 2 on mismatch.

    Only the classifier may be missing or differently shaped: features do not use it.
    """
    import timm
    import torch

    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    expected = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    classifier = full.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def is_head(key: str) -> bool:
        return any(key.startswith(h + ".") for h in heads)

    missing = [k for k in expected if k not in state_dict and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {expected[k]}"
        for k in state_dict
        if k in expected and tuple(state_dict[k].shape) != expected[k] and not is_head(k)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape (e.g. {'; '.join(mismatched[:2])})")
    if problems:
        raise UsageError(f"checkpoint does not fit {name}: {'; '.join(problems)} - is it for another model?")
    for head in heads:  # another num_classes: features ignore the classifier anyway
        for suffix in (".weight", ".bias"):
            key = head + suffix
            if key in state_dict and key in expected and tuple(state_dict[key].shape) != expected[key]:
                del state_dict[key]


def _pretrained_error(name: str, exc: BaseException) -> FeatdumpError:
    text = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
    if "No pretrained weights exist" in text or "no pretrained" in text.lower():
        return UsageError(f"timm has no pretrained weights for {name}; pass --checkpoint FILE or --no-pretrained")
    return FeatdumpError(
        f"could not get pretrained weights for {name} ({why_no_download(exc)}); "
        f"run `featdump fetch {name}` where there is internet, or pass --checkpoint FILE or --no-pretrained"
    )


def why_no_download(exc: BaseException) -> str:
    """A short reason for a failed hub download, not huggingface_hub's paragraph."""
    kind = exc.__class__.__name__
    text = " ".join(str(exc).split())
    if "LocalEntryNotFound" in kind or "OfflineMode" in kind or "HF_HUB_OFFLINE" in text:
        return "not in the Hugging Face cache, and the hub is offline or unreachable"
    if "RepositoryNotFound" in kind or "EntryNotFound" in kind:
        return f"not found on the Hugging Face hub ({kind})"
    first = text.split(". ")[0]
    if len(first) > 160:
        first = first[:157].rsplit(" ", 1)[0] + "..."
    return f"{kind}: {first}" if first else kind


def weights_tag(name: str, model: Any) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    arch = cfg.get("architecture") or name.split(".", 1)[0]
    tag = cfg.get("tag")
    label = f"{arch}.{tag}" if tag else arch
    hub = cfg.get("hf_hub_id")
    return f"pretrained:{label}" + (f" (hf-hub:{hub})" if hub else "")


@contextlib.contextmanager
def _quiet_timm() -> Iterator[None]:
    """timm logs "unexpected keys" when a full checkpoint feeds a features-only model: expected here
    (check_state_dict has already compared the checkpoint with the full model)."""
    loggers = [logging.getLogger(n) for n in ("timm", "huggingface_hub")]  # the hub logs every retry
    old = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, old):
            logger.setLevel(level)


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
        from featdump.model.modules import load_module_backbone

        return load_module_backbone(
            name, layers, tokens=tokens, output_stride=output_stride, img_size=img_size,
            pretrained=pretrained, checkpoint=checkpoint,
        )  # fmt: skip
    desc = describe(name, out_indices, output_stride, img_size)
    indices = desc.out_indices
    state_dict = None
    if checkpoint:
        state_dict = load_checkpoint(checkpoint)
        check_state_dict(name.split(".", 1)[0], state_dict)
        weights = f"checkpoint:{Path(checkpoint).resolve()} sha256:{sha256_file(checkpoint)}"
    elif pretrained:
        weights = ""
    else:
        weights = "random"
    try:
        with _quiet_timm():
            model = _features_model(
                name,
                out_indices=indices,
                output_stride=output_stride,
                img_size=img_size,
                pretrained=bool(pretrained and not checkpoint),
                state_dict=state_dict,
            )
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, network and cache failures
        if pretrained and not checkpoint:
            raise _pretrained_error(name, exc) from None
        raise
    model.eval()
    if not weights:
        weights = weights_tag(name, model)
    return Backbone(name, model, desc.layers, resolve_data_config(model, img_size), indices, output_stride, weights)
