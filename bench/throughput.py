"""Throughput of featdump against bare timm loops on the same images, measured interleaved.

Four ways to get the same features, each timed with startup excluded:

* **bare forward**: the model alone on pre-decoded tensors (exact timm transform, done beforehand),
  at the best batch size / memory format found by a short search: the ceiling;
* **serial decode + forward**: decode and transform a batch, then run it, in one thread of control
  (the same forward configuration): what you get without overlap;
* **naive loop**: one image at a time, PIL -> timm transform -> forward -> h5py append per layer,
  with one torch thread, the loop people write first;
* **featdump extract**: the real command (``python -m featdump extract``) in a fresh process, run
  on a short and a long list; rate = extra images / extra seconds, so process start, imports,
  model creation and worker start-up cancel out.

Each repetition runs all of them, in a rotating order; medians over repetitions are reported,
and ratios are taken within a repetition before the median.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelCase:
    """One benchmarked configuration of ``featdump extract``."""

    model: str
    label: str
    out_indices: str | None  # None: all levels
    dtype: str
    checkpoint: str | None  # None: random weights (--no-pretrained); speed does not depend on weights
    variants: tuple[str, ...] = ("--compression zstd",)  # extra featdump runs, besides the defaults

    def featdump_args(self) -> list[str]:
        args = ["--dtype", self.dtype]
        if self.out_indices:
            args += ["--out-indices", self.out_indices]
        args += ["--checkpoint", self.checkpoint] if self.checkpoint else ["--no-pretrained"]
        return args


@dataclass
class ForwardConfig:
    batch_size: int
    channels_last: bool
    rate: float = 0.0

    def describe(self) -> str:
        return f"bs {self.batch_size}" + (", channels_last" if self.channels_last else "")


@dataclass
class CaseResult:
    case: ModelCase
    best: ForwardConfig
    search: list[ForwardConfig]
    rates: dict[str, list[float]] = field(default_factory=dict)  # measurement -> img/s per rep
    ratios: dict[str, list[float]] = field(default_factory=dict)
    stored_ratio: dict[str, float] = field(default_factory=dict)  # featdump variant -> stored/raw
    featdump_images: tuple[int, int] = (0, 0)  # featdump's short and long runs (JPEGs cycled for fast models)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bare:
    """The model and its transform, outside featdump."""

    def __init__(self, case: ModelCase, device: Any) -> None:
        import torch

        from featdump.model.backbone import load_backbone

        torch.manual_seed(0)
        self.backbone = load_backbone(
            case.model,
            out_indices=[int(i) for i in case.out_indices.split(",")] if case.out_indices else None,
            pretrained=False,
            checkpoint=case.checkpoint,
        )
        self.device = device
        self.model = self.backbone.model.to(device).eval()
        self.transform = self.backbone.data.transform()
        self.memory_format = torch.contiguous_format

    def set_format(self, channels_last: bool) -> None:
        import torch

        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)

    def forward(self, x: Any) -> list[Any]:
        import torch

        with torch.inference_mode():
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            return list(self.model(x))

    def forward_rate(self, tensors: list[Any], cfg: ForwardConfig) -> float:
        """Images/s of the forward pass alone (one warm-up batch first)."""
        import torch

        self.set_format(cfg.channels_last)
        bs = cfg.batch_size
        batches = [torch.stack(tensors[i : i + bs]) for i in range(0, len(tensors), bs)]
        self.forward(batches[0])
        _sync(self.device)
        t0 = time.perf_counter()
        for b in batches:
            self.forward(b)
        _sync(self.device)
        return len(tensors) / (time.perf_counter() - t0)

    def serial_rate(self, paths: list[Path], cfg: ForwardConfig) -> float:
        """Images/s of decode + transform + forward, one after the other, same forward config."""
        import torch

        from featdump.data.decode import load_rgb

        self.set_format(cfg.channels_last)
        bs = cfg.batch_size
        self.forward(torch.stack([self.transform(load_rgb(str(p))) for p in paths[:bs]]))
        _sync(self.device)
        t0 = time.perf_counter()
        for i in range(0, len(paths), bs):
            x = torch.stack([self.transform(load_rgb(str(p))) for p in paths[i : i + bs]])
            outs = self.forward(x)
            [o.cpu() for o in outs]
        _sync(self.device)
        return len(paths) / (time.perf_counter() - t0)

    def naive_rate(self, paths: list[Path], dtype: str, folder: Path) -> float:
        """Images/s of the loop people write first: one image at a time, one torch thread,
        PIL -> timm transform -> forward -> numpy -> h5py append to each layer's dataset."""
        import h5py
        import numpy as np
        import torch
        from PIL import Image

        self.set_format(False)
        out = folder / "naive.h5"
        with torch_threads(1), h5py.File(out, "w") as h5:
            sets: list[Any] = []
            t0 = 0.0
            for k, p in enumerate(paths):
                if k == 1:
                    t0 = time.perf_counter()  # image 0 creates the datasets (warm-up)
                img = Image.open(p).convert("RGB")
                x = self.transform(img).unsqueeze(0).to(self.device)
                with torch.no_grad():
                    feats = [o.float().cpu().numpy().astype(dtype) for o in self.model(x)]
                if not sets:
                    sets = [
                        h5.create_dataset(f"l{j}", shape=(0, *f.shape[1:]), maxshape=(None, *f.shape[1:]), dtype=dtype)
                        for j, f in enumerate(feats)
                    ]
                for ds, f in zip(sets, feats, strict=True):
                    ds.resize(ds.shape[0] + 1, axis=0)
                    ds[-1] = np.asarray(f[0])
            rate = (len(paths) - 1) / (time.perf_counter() - t0)
        out.unlink()
        return rate


def predecode(bare: Bare, paths: list[Path]) -> list[Any]:
    from featdump.data.decode import load_rgb

    return [bare.transform(load_rgb(str(p))) for p in paths]


def search_best(bare: Bare, tensors: list[Any], device: Any, quick: bool) -> tuple[ForwardConfig, list[ForwardConfig]]:
    """The fastest batch size / memory format for the bare forward pass on this machine."""
    sizes = (32, 64, 128) if device.type == "cuda" else ((1, 8) if quick else (1, 8, 16))
    tried = []
    for bs in sizes:
        for cl in (False, True):
            cfg = ForwardConfig(bs, cl)
            sample = tensors[: min(len(tensors), max(bs, 4 if quick else 16))]
            cfg.rate = bare.forward_rate(sample, cfg)
            tried.append(cfg)
    best = max(tried, key=lambda c: c.rate)
    return ForwardConfig(best.batch_size, best.channels_last, best.rate), tried


def write_list(folder: Path, paths: list[Path], name: str) -> Path:
    listing = folder / name
    listing.write_text("".join(f"{p.absolute()}\n" for p in paths), encoding="utf-8")  # keep symlink names
    return listing


def run_featdump(case: ModelCase, listing: Path, out: Path, device: str, extra: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one ``featdump extract`` process, and the file's stored/raw byte counts."""
    import h5py

    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in extra if "=" in kv and not kv.startswith("-"))  # NAME=value: environment
    args = [a for a in extra if not ("=" in a and not a.startswith("-"))]
    cmd = [
        sys.executable, "-m", "featdump", "extract", case.model, str(listing), "-o", str(out),
        "--overwrite", "--quiet", "--device", device, *case.featdump_args(), *args,
    ]  # fmt: skip
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"featdump failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    with h5py.File(out, "r") as h5:
        stored = sum(ds.id.get_storage_size() for ds in h5["features"].values())
        raw = sum(ds.size * ds.dtype.itemsize for ds in h5["features"].values())
    out.unlink()
    return seconds, {"stored": stored, "raw": raw}


def featdump_rate(
    case: ModelCase, small: Path, large: Path, n_small: int, n_large: int, folder: Path, device: str, extra: list[str]
) -> tuple[float, float]:
    """(images/s with startup cancelled, stored/raw) from a short and a long run."""
    t_small, _ = run_featdump(case, small, folder / "small.h5", device, extra)
    t_large, sizes = run_featdump(case, large, folder / "large.h5", device, extra)
    extra_seconds = max(t_large - t_small, 1e-6)
    return (n_large - n_small) / extra_seconds, sizes["stored"] / max(1, sizes["raw"])


def measure_case(
    case: ModelCase, paths: list[Path], device: Any, reps: int, quick: bool, log: Any
) -> CaseResult:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    bare = Bare(case, device)
    with torch_threads(cpus):
        tensors = predecode(bare, paths)
        best, tried = search_best(bare, tensors, device, quick)
    log(f"  {case.label}: best bare forward {best.describe()} ({best.rate:.1f} img/s in the search)")
    result = CaseResult(case, best, tried)
    naive_paths = paths[: max(8, len(paths) // 3)]
    dev = "cuda" if device.type == "cuda" else device.type
    with tempfile.TemporaryDirectory(prefix="featdump-bench-") as tmp:
        folder = Path(tmp)
        # featdump's long run should last >= ~5 s more than the short one, or start-up jitter
        # (+-0.3 s) dominates: fast models read the same JPEGs several times (symlinks, new names).
        cycles = 1 if quick else max(1, math.ceil(5 * best.rate / len(paths)))
        many = [folder / "cycled" / f"c{k:06d}{p.suffix}" for k, p in enumerate(paths * cycles)]
        many[0].parent.mkdir()
        for link, p in zip(many, paths * cycles, strict=True):
            link.symlink_to(p.resolve())
        n_small = min(len(many) // 2, max(best.batch_size, len(many) // 3))
        small = write_list(folder, many[:n_small], "small.txt")
        large = write_list(folder, many, "large.txt")
        result.featdump_images = (n_small, len(many))
        steps: list[tuple[str, Any]] = [
            ("bare forward", lambda: bare.forward_rate(tensors, best)),
            ("serial decode + forward", lambda: bare.serial_rate(paths, best)),
            ("naive loop", lambda: bare.naive_rate(naive_paths, case.dtype, folder)),
            ("featdump", lambda: featdump_rate(case, small, large, n_small, len(many), folder, dev, [])),
        ]
        for variant in () if quick else case.variants:  # the defaults are enough for a smoke run
            steps.append(
                (
                    f"featdump {variant}",
                    lambda v=variant: featdump_rate(case, small, large, n_small, len(many), folder, dev, v.split()),
                )
            )
        for rep in range(reps):
            shift = rep % len(steps)
            rates: dict[str, float] = {}
            for name, step in steps[shift:] + steps[:shift]:
                with torch_threads(cpus):
                    got = step()
                if isinstance(got, tuple):
                    got, stored = got
                    result.stored_ratio[name] = stored
                rates[name] = got
                result.rates.setdefault(name, []).append(got)
            for name in [s for s, _ in steps if s.startswith("featdump")]:
                for base in ("bare forward", "serial decode + forward", "naive loop"):
                    result.ratios.setdefault(f"{name} / {base}", []).append(rates[name] / rates[base])
            log(
                f"  {case.label} rep {rep + 1}/{reps}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
                + " img/s"
            )
    return result


def summarize(result: CaseResult) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in result.rates.items()}
    return {
        "model": result.case.model,
        "label": result.case.label,
        "out_indices": result.case.out_indices or "all",
        "dtype": result.case.dtype,
        "best_forward": result.best.describe(),
        "featdump_images": result.featdump_images,
        "search": [{"config": c.describe(), "img_s": round(c.rate, 2)} for c in result.search],
        "img_s_median": {k: round(v, 2) for k, v in med.items()},
        "img_s_all": {k: [round(x, 2) for x in v] for k, v in result.rates.items()},
        "ratio_median": {k: round(statistics.median(v), 3) for k, v in result.ratios.items()},
        "ratio_all": {k: [round(x, 3) for x in v] for k, v in result.ratios.items()},
        "stored_over_raw": {k: round(v, 3) for k, v in result.stored_ratio.items()},
    }
