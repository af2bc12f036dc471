"""featdump: per-layer feature maps of timm backbones, stored in HDF5.

Importing this package is cheap: torch and timm load only when a command needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"
FORMAT_VERSION = 1
