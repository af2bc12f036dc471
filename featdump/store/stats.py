"""``featdump show FILE --layer NAME --row R``: statistics of one stored map, as data.

Range, mean, share of exact zeros, non-finite values (NaN is what a missing merged shard reads as)
and the spread of per-channel L2 norms (dead or exploding channels stand out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featdump.errors import UsageError
from featdump.store.reader import FeatureFile
from featdump.store.rowdata import layout_of


def map_stats(path: str | Path, layer: str, row: int) -> dict[str, Any]:
    """Statistics of ``layer`` at file row ``row`` (negative rows count from the end), JSON-ready."""
    with FeatureFile(path) as ff:
        if layer not in ff.layers:
            raise UsageError(f"no layer {layer!r} in {ff.path}; layers: {', '.join(ff.layers)}")
        n = ff.num_images
        if not -n <= row < n:
            raise UsageError(f"--row {row} is out of range: {ff.path} has {n} committed rows (0..{n - 1})")
        row %= n
        stored = ff.numpy(layer, row)
        layout = layout_of(ff.attrs(layer), stored.ndim + 1)
        x = stored.astype(np.float64)
        finite = np.isfinite(x)
        values = x[finite]
        per_channel = np.where(finite, x, 0.0)
        if layout == "NTD" and x.ndim == 2:  # token rows (T, D) have D channels
            per_channel = per_channel.T
        norms = np.sqrt((per_channel.reshape(per_channel.shape[0], -1) ** 2).sum(axis=1))
        info: dict[str, Any] = {
            "file": str(ff.path),
            "layer": layer,
            "row": row,
            "path": ff.paths[row],
            "shape": list(stored.shape),
            "dtype": str(stored.dtype),
            "layout": layout,
            **{key: float(getattr(values, key)()) if values.size else None for key in ("min", "max", "mean", "std")},
            "zeros": float((x == 0).mean()) if x.size else 0.0,
            "non_finite": int(x.size - values.size),
            "channels": int(norms.size),
            "channel_norms": {
                "min": float(norms.min()),
                "median": float(np.median(norms)),
                "mean": float(norms.mean()),
                "max": float(norms.max()),
                "argmin": int(norms.argmin()),
                "argmax": int(norms.argmax()),
                "zero_channels": int((norms == 0).sum()),
            },
        }
        if ff.ids is not None:
            info["id"] = ff.ids[row]
    return info
