"""The one weights decision: a checkpoint file, timm's pretrained weights, or random init
(:func:`choose_weights`), and the model built so (:func:`create_with_weights`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.text import first_line


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _unwrap(obj: Any) -> dict[str, Any]:
    """Accept ``{'state_dict': …}`` / ``{'model': …}`` nesting and ``module.`` prefixes."""
    import torch

    for _ in range(4):
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in ("state_dict", "model", "model_state_dict", "module") if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
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
    try:  # a folder or a FIFO is said as such (a FIFO would block the read and the sha256)
        st = p.stat()
    except FileNotFoundError:
        raise UsageError(f"checkpoint not found: {p}") from None
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"checkpoint {p} is a folder, not a file; give the checkpoint file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"checkpoint {p} is not a regular file (a FIFO, socket or device)")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"cannot read safetensors checkpoint {p}: {exc}") from None
        return _unwrap(tensors)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise UsageError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    if not head:
        raise UsageError(f"checkpoint {p} is empty (0 bytes)")
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save: a zip archive, or a legacy pickle
        raise UsageError(
            f"{p} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle; "
            "expected .pth/.pt/.bin from torch.save, or .safetensors)"
        )
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = first_line(exc, "unsupported pickle content")
        if "numpy" in str(exc):  # numpy arrays pickle as numpy globals: refused like any code
            raise UsageError(
                f"refused checkpoint {p}: it holds numpy arrays, which need unpickling code; "
                "re-save it with torch tensors (or as .safetensors)"
            ) from None
        raise UsageError(
            f"refused checkpoint {p}: loading it would run code from the file ({first[:160]}); "
            "convert it to .safetensors in an environment you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot read checkpoint {p}: {exc.__class__.__name__}: {first_line(exc, '')}".rstrip(": ")) from None
    return _unwrap(obj)


def check_state_dict(name: str, state_dict: dict[str, Any]) -> None:
    """Compare a checkpoint with the full timm model (meta device); only the classifier, which
    features do not use, may be missing or differently shaped."""
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
    found = [(missing, "missing", ", ", 3), (unexpected, "unexpected", ", ", 3), (mismatched, "of another shape", "; ", 2)]
    problems = [f"{len(keys)} {what} (e.g. {sep.join(keys[:k])})" for keys, what, sep, k in found if keys]
    if problems:
        raise UsageError(f"checkpoint does not fit {name}: {'; '.join(problems)} - is it for another model?")
    for head in heads:  # another num_classes: features ignore the classifier anyway
        for suffix in (".weight", ".bias"):
            key = head + suffix
            if key in state_dict and key in expected and tuple(state_dict[key].shape) != expected[key]:
                del state_dict[key]


OTHER_WEIGHTS = ", or pass --checkpoint FILE or --no-pretrained"  # extract's way out (verify has none)


class NoWeights(FeatdumpError):
    """Pretrained weights that could not be had here (offline, not in the cache)."""


def pretrained_error(name: str, exc: BaseException) -> FeatdumpError:
    text = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
    if "No pretrained weights exist" in text or "no pretrained" in text.lower():
        return UsageError(f"timm has no pretrained weights for {name}; pass --checkpoint FILE or --no-pretrained")
    return NoWeights(
        f"could not get pretrained weights for {name} ({why_no_download(exc)}); "
        f"run `featdump fetch {name}` where there is internet{OTHER_WEIGHTS}"
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


@contextlib.contextmanager
def quiet_timm() -> Iterator[None]:
    """timm logs "unexpected keys" when a full checkpoint feeds a features-only model: expected here
    (check_state_dict has already compared the checkpoint with the full model)."""
    old = {logger: logger.level for logger in map(logging.getLogger, ("timm", "huggingface_hub"))}  # the hub logs every retry
    for logger in old:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in old.items():
            logger.setLevel(level)


@dataclass
class WeightsChoice:
    """Where the weights come from: ``state_dict`` (a checked checkpoint), else ``pretrained``."""

    pretrained: bool
    state_dict: dict[str, Any] | None
    checkpoint: str | None
    tag: str  # the file's ``weights`` attribute; "" until a pretrained model names its tag


def choose_weights(name: str, *, pretrained: bool, checkpoint: str | None) -> WeightsChoice:
    """A checkpoint wins over ``pretrained``; it is read (never unpickling code) and compared with
    the full model (exit 2 on mismatch) before anything is built."""
    if checkpoint:
        state_dict = load_checkpoint(checkpoint)
        check_state_dict(name.split(".", 1)[0], state_dict)
        tag = f"checkpoint:{Path(checkpoint).resolve()} sha256:{sha256_file(checkpoint)}"
        return WeightsChoice(True, state_dict, checkpoint, tag)
    return WeightsChoice(bool(pretrained), None, None, "" if pretrained else "random")


def create_with_weights(
    name: str, choice: WeightsChoice, create: Callable[..., Any], *, headless_retry: bool = False
) -> tuple[Any, str]:
    """``create(pretrained=…, **kwargs)`` with the chosen weights; returns ``(model, weights tag)``.

    A checkpoint goes through timm's own loader (``pretrained_cfg_overlay``), which resamples position
    embeddings for another ``--img-size``; ``headless_retry`` loads one without a classifier into a
    model built without one. Hub, network and cache failures become one line (:func:`pretrained_error`).
    """
    from featdump.model.hub import offline_unless_reachable

    try:
        with quiet_timm(), offline_unless_reachable(choice.pretrained and choice.state_dict is None):
            if choice.state_dict is None:
                model = create(pretrained=choice.pretrained)
            else:
                try:
                    model = create(pretrained=True, pretrained_cfg_overlay={"state_dict": choice.state_dict})
                except RuntimeError as exc:
                    if not headless_retry or "Missing key" not in str(exc) or choice.checkpoint is None:
                        raise
                    fresh = load_checkpoint(choice.checkpoint)  # timm consumed the first copy
                    model = create(pretrained=True, num_classes=0, pretrained_cfg_overlay={"state_dict": fresh})
    except Exception as exc:  # noqa: BLE001 - hub, network and cache failures
        if isinstance(exc, UsageError) or not choice.pretrained or choice.state_dict is not None:
            raise
        raise pretrained_error(name, exc) from None
    if choice.tag:
        return model, choice.tag
    cfg = getattr(model, "pretrained_cfg", {}) or {}  # the tag of the pretrained weights timm loaded
    arch = cfg.get("architecture") or name.split(".", 1)[0]
    label = f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch
    hub = cfg.get("hf_hub_id")
    return model, f"pretrained:{label}" + (f" (hf-hub:{hub})" if hub else "")
