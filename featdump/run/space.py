"""Disk planning: the check ``extract`` makes before loading the model (the rule: docs/trust.md),
bytes per image from the layer shapes (meta device, no weights). With ``--compression`` the need is
scaled by the best ratio measured for the codec (:data:`BEST_RATIO`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpWarning, UsageError
from featdump.store.format import free_bytes, with_margin
from featdump.text import fmt_bytes

# stored / raw bytes, the best measured per codec (resnet50 maps, about half zeros: docs/performance.md)
BEST_RATIO = {"none": 1.0, "gzip": 0.46, "lzf": 0.53, "zstd": 0.47}


def check_space(cfg: Any, out_path: Path, selection: Any, processors: Sequence[Any] = (), resumed: dict | None = None) -> None:
    """Refuse (UsageError) a run whose rows cannot fit on the output's file system (``resumed``: the
    attributes of the file ``--resume`` continues; only the images past its ``inputs_done`` count).
    Tars are counted as read: the check uses their estimated length, and warns where there is none."""
    from featdump.model.backbone import describe
    from featdump.run.processors import stored_layers

    total, about = selection.length, ""
    if total is None:
        estimate = selection.estimated_length()
        if estimate is None:
            warnings.warn(
                "disk space not checked: the number of images in these tar shards is known only once they are read "
                "(remote or compressed shards); --no-space-check silences this",
                FeatdumpWarning,
                stacklevel=2,
            )
            return
        total, about = estimate
    images = max(0, total - int(resumed.get("inputs_done", 0))) if resumed else total
    if not images:
        return
    folder = out_path.resolve().parent if out_path.parent != Path("") else Path.cwd()
    try:  # the stored layers: shapes after pooling and processors
        desc = describe(cfg.model, cfg.out_indices, cfg.output_stride, cfg.img_size, layers=cfg.layers, tokens=cfg.tokens, max_side=cfg.max_side)
        layers = stored_layers(desc, cfg.pool, processors)
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - a model the meta device cannot build: the load says more
        return
    per_image = sum(layer.bytes_per_image(cfg.dtype, cfg.pool) for layer in layers)
    raw, free = per_image * images, free_bytes(folder)
    need = with_margin(int(raw * BEST_RATIO.get(cfg.compression, 1.0)))
    if need <= free:
        return
    ways = [
        "--dtype float16 (half)" if cfg.dtype != "float16" else "",
        "fewer levels (--out-indices)",
        "--pool avg (one vector per layer)" if cfg.pool == "none" else "",
        "--compression zstd" if cfg.compression == "none" else "",
        "another -o folder",
        "--no-space-check to try anyway",
    ]
    how = "uncompressed" if cfg.compression == "none" else f"at {cfg.compression}'s best ratio {BEST_RATIO[cfg.compression]}"
    raise UsageError(
        f"not enough space for the output: {'about ' if about else ''}{images} images"
        f"{f' ({about})' if about else ''} × {fmt_bytes(per_image)} = {fmt_bytes(raw)} "
        f"of features, {fmt_bytes(need)} with margin {how}, but {folder} has {fmt_bytes(free)} free; "
        f"ways out: {', '.join(w for w in ways if w)}"
    )
