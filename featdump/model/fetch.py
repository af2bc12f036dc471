"""Download pretrained weights into the local cache on a machine with internet (a login node).

Compute nodes then run ``featdump extract`` with ``HF_HUB_OFFLINE=1`` and the same ``HF_HOME``:
timm finds the files where this module put them, because it asks for the very same files in the
very same order (``model.safetensors`` before ``pytorch_model.bin``, a tag's own file name if it has
one). Weights that timm keeps at a plain URL go to torch's hub cache (``TORCH_HOME``) instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.model.hub import hub_endpoint

HF_WEIGHTS_NAME = "pytorch_model.bin"  # timm's default file name on the hub


@dataclass(frozen=True)
class WeightsSource:
    """Where timm would load a model's pretrained weights from."""

    model: str  # as asked, e.g. resnet18 or resnet18.tv_in1k
    label: str  # architecture.tag
    kind: str  # "hf-hub" or "url"
    location: str  # repo id (with @revision) or URL
    filename: str  # file timm asks for on the hub ("" for a URL)
    safe_first: bool  # timm tries the .safetensors alternatives first


@dataclass(frozen=True)
class Fetched:
    """One model's weights, now in the cache."""

    source: WeightsSource
    path: Path
    bytes: int
    cached: bool  # already there before this call


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache() -> str:
    """The Hugging Face hub cache folder in use (``HF_HUB_CACHE``, else ``HF_HOME``/hub)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def weights_source(model: str) -> WeightsSource:
    """Resolve ``model`` as ``timm.create_model(model, pretrained=True)`` does (reading and so caching
    an ``hf-hub:`` repo's ``config.json``, as timm does); exit 2 if it has no weights."""
    from timm.models import (
        load_model_config_from_hf,
        parse_model_name,
        resolve_pretrained_cfg,
        split_model_name_tag,
    )

    from featdump.model.create import check_model_name
    from featdump.model.timm_compat import resolve_pretrained_source

    check_model_name(model)
    try:
        prefix, model_id = parse_model_name(model)
    except ValueError as exc:
        raise UsageError(f"{model}: {exc}") from None
    if prefix == "local-dir":
        raise UsageError(f"{model} reads its weights from a local folder; there is nothing to fetch")
    if prefix == "hf-hub":
        try:
            loaded = load_model_config_from_hf(model_id)
        except Exception as exc:  # noqa: BLE001 - offline, network, missing repo
            src = WeightsSource(model, model_id, "hf-hub", model_id, "config.json", False)
            raise _hf_error(src, exc) from None
        arch, tag = str(loaded[1]), None
        pretrained: Any = loaded[0]
    else:
        arch, tag = split_model_name_tag(model_id)
        pretrained = tag or None
    try:
        cfg = resolve_pretrained_cfg(arch, pretrained_cfg=pretrained).to_dict()
    except RuntimeError as exc:  # unknown tag
        raise UsageError(f"{model}: {exc} See `featdump models '{arch}*' --pretrained` for the tags") from None
    kind, loc = resolve_pretrained_source(cfg)
    label = f"{cfg.get('architecture') or arch}.{cfg.get('tag')}" if cfg.get("tag") else arch
    if kind == "hf-hub":
        repo, filename = loc if isinstance(loc, tuple) else (loc, HF_WEIGHTS_NAME)
        custom = cfg.get("custom_load")
        safe_first = not filename.endswith(".safetensors") and not (isinstance(custom, str) and custom == "hf")
        return WeightsSource(model, label, "hf-hub", str(repo), str(filename), safe_first)
    if kind == "url":
        return WeightsSource(model, label, "url", str(loc), "", False)
    raise UsageError(f"timm has no pretrained weights for {model}; nothing to fetch (use --checkpoint FILE instead)")


def _hf_error(src: WeightsSource, exc: BaseException) -> FeatdumpError:
    from featdump.model.weights import why_no_download

    text = why_no_download(exc)
    if offline():
        return FeatdumpError(
            f"{src.model}: {src.location} is not in the Hugging Face cache ({hub_cache()}) and HF_HUB_OFFLINE=1 "
            f"forbids downloading; run `featdump fetch {src.model}` where there is internet, with the same HF_HOME"
        )
    return FeatdumpError(
        f"{src.model}: could not download {src.location} from the Hugging Face hub ({text}); check the network "
        f"(proxy, HF_ENDPOINT), or run `featdump fetch {src.model}` on a machine with internet and share HF_HOME"
    )


def _fetch_hf(src: WeightsSource) -> tuple[Path, bool]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    from featdump.model.hub import offline_unless_reachable
    from featdump.model.timm_compat import hf_split, safe_alternatives
    from featdump.model.weights import quiet_timm

    repo, revision = hf_split(src.location)
    names = [*safe_alternatives(src.filename), src.filename] if src.safe_first else [src.filename]
    with quiet_timm(), offline_unless_reachable() as unreachable:  # no retry noise; no network: fail at once
        for name in names:
            before = try_to_load_from_cache(repo, name, revision=revision)
            try:
                return Path(hf_hub_download(repo, name, revision=revision, library_name="featdump")), isinstance(before, str)
            except Exception as exc:  # noqa: BLE001 - network, auth, gated repos: one clear line
                # a missing file (also "not cached and offline"): timm moves on to the next the same way
                if isinstance(exc, EntryNotFoundError) and name != names[-1]:
                    continue
                if unreachable and not offline():
                    raise FeatdumpError(
                        f"{src.model}: could not download {src.location}: the Hugging Face hub ({hub_endpoint()}) "
                        "cannot be reached; check the network (proxy, HF_ENDPOINT), or run `featdump fetch` on a "
                        "machine with internet and share HF_HOME"
                    ) from None
                raise _hf_error(src, exc) from None
    raise AssertionError("unreachable: the last name returns or raises")


def _fetch_url(src: WeightsSource) -> tuple[Path, bool]:
    from featdump.model.timm_compat import check_cached_file, download_cached_file

    cached = check_cached_file(src.location)
    if not cached and offline():
        raise FeatdumpError(
            f"{src.model}: {src.location} is not in torch's hub cache and HF_HUB_OFFLINE=1 is set; run "
            f"`featdump fetch {src.model}` where there is internet, with the same TORCH_HOME"
        )
    try:
        return Path(download_cached_file(src.location, check_hash=True, progress=True)), bool(cached)
    except Exception as exc:  # noqa: BLE001 - network errors, hash mismatch
        text = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")[:240]
        raise FeatdumpError(f"{src.model}: could not download {src.location} ({text})") from None


def fetch_weights(src: WeightsSource) -> Fetched:
    """Put one model's weights into the cache (no-op when they are there) and say where."""
    path, cached = _fetch_hf(src) if src.kind == "hf-hub" else _fetch_url(src)
    return Fetched(src, path, os.path.getsize(os.path.realpath(path)), cached)

