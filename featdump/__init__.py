"""featdump: per-layer feature maps of timm backbones, stored in HDF5.

Importing this package is cheap: torch and timm load only when a command needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
FORMAT_VERSION = 1

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily (no torch on import)
    from featdump.api import extract
    from featdump.store.reader import FeatureFile, open
    from featdump.store.torchdata import collate

__all__ = ["FORMAT_VERSION", "FeatureFile", "__version__", "collate", "extract", "open"]

_LAZY = {"extract": "featdump.api", "open": "featdump.store.reader", "FeatureFile": "featdump.store.reader", "collate": "featdump.store.torchdata"}


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str) -> Any:
    """``featdump.extract`` / ``featdump.open`` / ``featdump.FeatureFile`` / ``featdump.collate``, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featdump' has no attribute {name!r}")
