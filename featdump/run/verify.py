"""``featdump verify FILE``: re-extract a random sample of stored rows with the file's recorded settings
(store/like.py, as ``extract --like``) through the same model loader, Loader and Forward stage as
``extract``, and compare. The tolerances and the two cases that widen them (fp32 on CUDA: TF32;
``--decode gpu`` rows, decoded here by libjpeg-turbo): docs/trust.md.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.errors import UsageError
from featdump.model.weights import OTHER_WEIGHTS, NoWeights
from featdump.options import OPTIONS

TOLERANCE: dict[tuple[str, str], tuple[float, float]] = {
    ("fp32", "float32"): (1e-3, 0.99999),
    ("fp32", "float16"): (1e-2, 0.9999),
}
AUTOCAST_TOLERANCE = (0.1, 0.99)
CUDA_FP32 = (5e-2, 0.9995)  # TF32 emulated on the CPU moved lite0's rows by up to 2.2e-2 x max|row|
OTHER_DECODER = (0.5, 0.98)  # ±1 on 30 % of the pixels moved lite0's rows by up to 0.36 x max|row|
_ATTRIBUTE = {"img-size": "input_size"}  # flags whose file attribute has another name
_SETTING_FLAGS = {f.lstrip("-") for o in OPTIONS if o.meaning for flag in o.flags for f in flag.split("/")}
# a forward needs about this many float32 copies of its input image (12 bytes a pixel) at its peak:
# measured 11-28 for resnet18/50, convnext_atto, efficientnet_b0 and vit_tiny (ru_maxrss, batch 1)
ROW_MEMORY = 32


def available_memory() -> int:
    """Bytes of memory this machine can still hand out (MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class CannotVerify(UsageError):
    """Exit 2: the file cannot be checked here (weights, inputs, processors or timm differ or are missing)."""


def tolerance(
    precision: str, dtype: str, made_on: str = "cpu", here: str = "cpu", decode: str = "cpu"
) -> tuple[float, float, list[str]]:
    """``(rtol, min_cos, why)`` for a file's precision and storage dtype, rows made on device
    ``made_on`` (its ``device`` attribute) and re-extracted on ``here``; ``why`` names each widening."""
    rtol, min_cos = TOLERANCE.get((precision, dtype), AUTOCAST_TOLERANCE)
    why = []
    cuda = [d for d in (made_on, here) if d.startswith("cuda")]
    if precision == "fp32" and cuda:
        rtol, min_cos = max(rtol, CUDA_FP32[0]), min(min_cos, CUDA_FP32[1])
        why.append(f"fp32 on {cuda[0]} runs convolutions in TF32")
    if decode == "gpu" and not here.startswith("cuda"):
        rtol, min_cos = max(rtol, OTHER_DECODER[0]), min(min_cos, OTHER_DECODER[1])
        why.append(f"JPEGs decoded on {here} here, by nvjpeg on {made_on} for the file")
    return rtol, min_cos, why


@dataclass
class LayerCheck:
    name: str
    max_abs: float  # largest absolute difference over the checked rows
    max_rel: float  # largest (absolute difference / max |stored|) of a row
    min_cos: float  # smallest cosine similarity of a row
    bad_rows: list[int] = field(default_factory=list)


@dataclass
class VerifyReport:
    path: str
    rows: list[int]
    paths: list[str]
    layers: list[LayerCheck]
    rtol: float
    min_cos: float
    precision: str
    dtype: str
    device: str
    widened: list[str] = field(default_factory=list)  # why the tolerance is wider than the table's

    @property
    def bad_rows(self) -> list[int]:
        return sorted({r for layer in self.layers for r in layer.bad_rows})

    @property
    def ok(self) -> bool:
        return not self.bad_rows


def as_attributes(message: str) -> str:
    """An option's error about a value read from the file, worded as the file's attribute (the
    user typed no such flag): ``--img-size 9000x9000 ...`` -> ``attribute input_size 9000x9000 ...``."""
    return re.sub(r"--([a-z][a-z-]+)", lambda m: "attribute " + _ATTRIBUTE.get(m[1], m[1].replace("-", "_")) if m[1] in _SETTING_FLAGS else m[0], message)


def compare(stored: Any, fresh: Any) -> tuple[float, float, float]:
    """One row: ``(max abs difference, that / max |stored|, cosine similarity)`` in float64 (rows of
    different shapes: infinitely far)."""
    import numpy as np

    if np.shape(stored) != np.shape(fresh):  # a ragged row at another grid
        return float("inf"), float("inf"), 0.0
    a = np.asarray(stored, dtype=np.float64).ravel()
    b = np.asarray(fresh, dtype=np.float64).ravel()
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cos = 1.0 if na == 0 and nb == 0 else (float(a @ b) / (na * nb) if na and nb else 0.0)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        same = np.array_equal(a, b, equal_nan=True)
        return (0.0 if same else float("inf"), 0.0 if same else float("inf"), 1.0 if same else 0.0)
    return diff, rel, cos


def verify_file(path: str | Path, n: int = 8, seed: int = 0, device: str = "auto",
                checkpoint: str | Path | None = None, max_image_bytes: int | None = None) -> VerifyReport:  # fmt: skip
    """Re-extract ``n`` random rows of ``path`` and compare them with the stored ones (``checkpoint``:
    the recorded checkpoint's bytes at another path; ``max_image_bytes``: as extract's, not recorded)."""
    import numpy as np
    import timm

    from featdump import open as open_file
    from featdump.configure import resolve
    from featdump.data.remote import RESUME_HINT, StoreStopped
    from featdump.data.tiles import loader as open_loader
    from featdump.model.backbone import backbone_for
    from featdump.run import processors
    from featdump.run.device import resolve_device
    from featdump.run.forward import Forward
    from featdump.store.check import input_kind
    from featdump.store.findinput import locate_rows
    from featdump.store.format import first_difference
    from featdump.store.like import read_attrs, recorded_options

    if n < 1:
        raise UsageError(f"-n must be at least 1, not {n}")
    if seed < 0:
        raise UsageError(f"--seed {seed}: give a seed of 0 or more")
    p = Path(path)
    attrs = read_attrs(p)
    made_with = str(attrs.get("timm_version", ""))
    if made_with and made_with != timm.__version__:
        raise CannotVerify(
            f"cannot verify {p}: it was made with timm {made_with}, this is timm {timm.__version__}; "
            f"verify with timm=={made_with}"
        )
    try:
        opts = recorded_options(p, attrs, where="cannot verify", onto=input_kind(attrs), checkpoint=checkpoint)
    except UsageError as exc:
        raise CannotVerify(str(exc)) from None
    try:  # the values come from the file, not from flags: errors name its attributes
        procs = processors.load(opts.get("process"))
        given = {"model": opts.pop("model"), "inputs": (str(p),), "output": str(p), "device": device}
        cfg = resolve({**given, "max_image_bytes": max_image_bytes}, like_values={k: v for k, v in opts.items() if v is not None})
        backbone = backbone_for(cfg)
    except UsageError as exc:
        raise CannotVerify(f"cannot verify {p}: {as_attributes(str(exc))}") from None
    except NoWeights as exc:  # exit 2 as well: the rows were not compared
        raise CannotVerify(f"cannot verify {p}: {str(exc).replace(OTHER_WEIGHTS, '')}") from None
    with open_file(p) as ff:
        if ff.num_images == 0:
            raise CannotVerify(f"cannot verify {p}: it holds no rows yet")
        drawn = np.random.default_rng(seed).choice(ff.num_images, size=min(n, ff.num_images), replace=False)
        rows = sorted(int(r) for r in drawn)
        stored_paths = [ff.paths[r] for r in rows]
        shapes = {name: tuple(ff[name].shape[1:]) for name in ff.layers}
        stored = {name: ff.numpy(name, rows) for name in ff.layers}
        wanted, gone = locate_rows(ff, rows, cap=cfg.max_image_bytes)
    if gone:
        raise CannotVerify(f"cannot verify {p}: {gone}")
    dev = resolve_device(cfg.device, 0)
    recorded = str(attrs.get("weights", ""))
    if recorded.startswith("pretrained:") and backbone.weights != recorded:
        raise CannotVerify(f"cannot verify {p}: it was made with weights {recorded}, this timm loads {backbone.weights}")
    if differs := first_difference(("mean", "std"), attrs, {"mean": list(backbone.data.mean), "std": list(backbone.data.std)}):
        raise CannotVerify(f"cannot verify {p}: its attribute {differs[0]} is {differs[1]}, this timm normalises with {differs[2]}")
    backbone.layers = processors.stored_layers(backbone, cfg.pool, procs)
    names = [layer.name for layer in backbone.layers]
    if sorted(names) != sorted(shapes):
        raise CannotVerify(f"cannot verify {p}: this timm builds layers {names}, the file holds {sorted(shapes)}")
    size = "x".join(str(d) for d in backbone.data.input_size[1:])
    for layer in backbone.layers:  # before the model runs: an input size the rows do not have is never run
        if tuple(layer.row_shape(cfg.pool)) != shapes[layer.name]:
            raise CannotVerify(
                f"cannot verify {p}: at its attribute input_size {size} this timm makes {layer.name} "
                f"{tuple(layer.stored_shape(cfg.pool))}, the file stores {shapes[layer.name]} per row"
            )
    refs = [ref for w in wanted for ref in w.found]  # several for a row only where /failed holds its path
    need, have = ROW_MEMORY * 12 * math.prod(backbone.data.input_size[1:]), available_memory()
    if need > have:  # a pooled file's input size shows in no shape
        raise CannotVerify(
            f"cannot verify {p}: re-extracting one row at its attribute input_size {size} needs about "
            f"{need / 2**30:.1f} GiB of memory, {have / 2**30:.1f} GiB is available"
        )
    only = {"only": [w.tile for w in wanted for _ in w.found]} if cfg.tiles else {}
    loader = open_loader(refs, backbone, cfg, dev, batch_size=max(1, min(len(refs), have // need)), workers=0, prefetch=2, **only)
    forward = Forward(backbone, dev, cfg.precision, cfg.pool, cfg.dtype, False, False, procs)
    outs: dict[int, list[Any]] = {}  # position in refs -> one array per layer
    errors: dict[int, str] = {}
    try:
        for batch in loader:
            errors.update((f.position, f.reason) for f in batch.failed)
            if batch.positions:
                arrays = forward(batch.pixels)
                outs.update((pos, [arr[j] for arr in arrays]) for j, pos in enumerate(batch.positions))
    except StoreStopped as exc:  # an image URL's store stopped answering
        raise CannotVerify(f"cannot verify {p}: {str(exc).removesuffix('; ' + RESUME_HINT)}") from None
    fresh: list[list[Any]] = []  # per row: one array per layer
    at = 0
    for w in wanted:
        span = range(at, at + len(w.found))
        at += len(w.found)
        chosen = w.pick([pos in outs for pos in span])
        if chosen is None:
            err = next((errors[pos] for pos in span if pos in errors), "no image")
            shown = w.found[0].source or w.path
            raise CannotVerify(f"cannot verify {p}: input image {shown} (row {w.row}) cannot be read now ({err})")
        fresh.append(outs[span[chosen]])
    made_on = str(attrs.get("device", "cpu"))
    rtol, min_cos, why = tolerance(cfg.precision, cfg.dtype, made_on, str(dev), cfg.decode)
    checks = []
    for j, name in enumerate(names):
        diff, rel, cos = zip(*(compare(stored[name][k], fresh[k][j]) for k in range(len(rows))), strict=True)
        bad = [row for row, r, c in zip(rows, rel, cos, strict=True) if r > rtol or c < min_cos]
        checks.append(LayerCheck(name, max(0.0, *diff), max(0.0, *rel), min(1.0, *cos), bad))
    return VerifyReport(str(p), rows, stored_paths, checks, rtol, min_cos, cfg.precision, cfg.dtype, str(dev), why)
