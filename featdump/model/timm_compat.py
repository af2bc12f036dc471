"""Every use of timm's private API goes through here (``timm.models._builder`` / ``_hub``).

timm has no public way to ask where ``create_model(..., pretrained=True)`` reads weights from, and
``featdump fetch`` must do exactly what timm does. Each private helper is looked up and checked here,
so a timm release that moves or changes one fails loudly (:class:`TimmChanged`, tests/test_compat.py)
instead of fetching the wrong file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from featdump.errors import FeatdumpError


class TimmChanged(FeatdumpError):
    """This timm release lacks or changed a private helper featdump relies on."""


def _private(module: str, name: str) -> Callable[..., Any]:
    import timm

    try:
        fn = getattr(importlib.import_module(f"timm.models.{module}"), name)
    except (ImportError, AttributeError):
        raise TimmChanged(
            f"timm {timm.__version__} has no timm.models.{module}.{name}, which featdump uses; "
            "install the timm version featdump was tested with (see pyproject.toml)"
        ) from None
    if not callable(fn):
        raise TimmChanged(f"timm {timm.__version__}: timm.models.{module}.{name} is not a function")
    return fn


def resolve_pretrained_source(cfg: dict[str, Any]) -> tuple[str, Any]:
    """``(kind, location)`` where timm would load pretrained weights from: kind is ``hf-hub``
    (location ``repo`` or ``(repo, filename)``), ``url``, ``file``, ``local-dir`` or ``state_dict``."""
    out = _private("_builder", "_resolve_pretrained_source")(cfg)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str)):
        raise TimmChanged(f"timm's _resolve_pretrained_source returned {out!r}, not (kind, location)")
    return out[0], out[1]


def safe_alternatives(filename: str) -> list[str]:
    """The ``.safetensors`` names timm tries on the hub before ``filename`` (a ``.bin``)."""
    out = list(_private("_hub", "_get_safe_alternatives")(filename))
    if not all(isinstance(name, str) for name in out):
        raise TimmChanged(f"timm's _get_safe_alternatives gave {out!r}, not file names")
    return out


def hf_split(hf_id: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> ``(org/name, revision)`` as timm splits hub ids."""
    repo, revision = _private("_hub", "hf_split")(hf_id)
    return str(repo), revision


def check_cached_file(url: str) -> Any:
    """timm's URL weights cache: the cached file's path, or a false value when not cached."""
    return _private("_hub", "check_cached_file")(url)


def download_cached_file(url: str, *, check_hash: bool = True, progress: bool = False) -> str:
    """Download ``url`` into torch's hub cache the way timm does (hash checked); the file's path."""
    return str(_private("_hub", "download_cached_file")(url, check_hash=check_hash, progress=progress))
