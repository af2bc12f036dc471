"""featdump on camera-sized photos on a CPU: resnet50, all levels, float16, 448 JPEGs of 0.1-4.5 MP.

Whole ``featdump extract`` processes on 64 and on 448 photos (start-up cancels out in the
difference), at --batch-size 8 and 16, against the best bare forward pass (batch 8, 16 or 32,
channels_last, on pre-decoded tensors), measured interleaved in a rotating order; the ratios are
taken within each repetition and their medians reported.
CPU-ms per image per stage: decode + resize + to-tensor (featdump's loader alone, one worker), the
forward pass (bare, at each batch size), the float16 NCHW conversion,
the writer (uncompressed), and the whole featdump process (its CPU time over the 384 images between
the two runs). On a machine shared with other jobs the wall-clock ratio measures how much of the
cores each side got (featdump runs more threads) more than how well it uses them; the bare forward's
CPU-ms over featdump's, per image, is the ratio that load skews least (1.0: nothing but the
forward pass).

    python -m bench.photos [reps]      # or: make bench (section "photos")
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as featdump extract sets it

import resource
import statistics
import tempfile
from pathlib import Path
from typing import Any

SMALL, LARGE = 64, 448
SIZES = (8, 16, 32)  # the bare forward's
RUNS = (8, 16)  # featdump's --batch-size: the CPU default before and after bench/cpubatch.py


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _forward_cpu_ms(bare: Any, tensors: list[Any], batch_size: int) -> float:
    import torch

    batches = [torch.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    bare.forward(batches[0])  # warm-up
    c0 = _cpu()
    for b in batches:
        bare.forward(b)
    return (_cpu() - c0) * 1000 / len(tensors)


def measure(cache: Path, reps: int, quick: bool, log: Any) -> dict[str, Any]:
    import torch

    from bench.hostpath import convert_ms, decode_rate, write_ms
    from bench.images import PHOTOS_MP, make_jpegs
    from bench.throughput import Bare, ForwardConfig, ModelCase, predecode, run_featdump, torch_threads, write_list
    from bench.writer import RESNET50
    from featdump.run.device import cpu_batch

    small, large = (8, 16) if quick else (SMALL, LARGE)
    paths = make_jpegs(cache / "photos", large, megapixels=PHOTOS_MP)[:large]
    mp = [_megapixels(p) for p in paths]
    model, runs = ("resnet18", RUNS[:1]) if quick else ("resnet50", RUNS)  # quick: a smoke run
    case = ModelCase(model, f"{model} (all levels, float16)", None, "float16", None)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    device = torch.device("cpu")
    bare = Bare(case, device)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="featdump-bench-") as tmp:
        folder = Path(tmp)
        short, long = write_list(folder, paths[:small], "small.txt"), write_list(folder, paths, "large.txt")
        with torch_threads(cpus):
            tensors = predecode(bare, paths[:SMALL])
        for rep in range(reps):
            steps = ["bare", *runs]
            shift = rep % len(steps)
            got: dict[str, float] = {}
            for step in steps[shift:] + steps[:shift]:
                if step == "bare":
                    with torch_threads(cpus):
                        for bs in SIZES:
                            got[f"bare bs {bs}"] = bare.forward_rate(tensors, ForwardConfig(bs, True))
                    continue
                extra = ["--batch-size", str(step)]
                c0 = _children_cpu()
                t_small, _ = run_featdump(case, short, folder / "s.h5", "cpu", extra)
                c1 = _children_cpu()
                t_large, _ = run_featdump(case, long, folder / "l.h5", "cpu", extra)
                c2 = _children_cpu()
                got[f"featdump bs {step}"] = (large - small) / max(t_large - t_small, 1e-6)
                got[f"featdump bs {step} CPU-ms/image"] = ((c2 - c1) - (c1 - c0)) * 1000 / (large - small)
            best = max(got[f"bare bs {bs}"] for bs in SIZES)
            for bs in runs:
                got[f"featdump bs {bs} / best bare"] = got[f"featdump bs {bs}"] / best
            got["load"] = os.getloadavg()[0]
            for k, v in got.items():
                rows.setdefault(k, []).append(v)
            log(f"  photos rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v:.2f}" for k, v in got.items()))
        with torch_threads(cpus):
            bare.set_format(True)
            stages = {
                **{f"forward (bs {bs})": _forward_cpu_ms(bare, tensors, bs) for bs in SIZES},
                "float16 NCHW conversion": convert_ms(RESNET50),
                "write (uncompressed)": write_ms(RESNET50, folder)[1],
            }
        linked = folder / "decode"
        linked.mkdir()
        for p in paths[:SMALL]:
            (linked / p.name).symlink_to(p.resolve())
        stages = {"decode + resize + to-tensor": decode_rate(linked, bare.backbone, 1)[1], **stages}
    return {
        "model": model,
        "runs": list(runs),
        "images": [small, large],
        "megapixels": [round(min(mp), 2), round(statistics.median(mp), 2), round(max(mp), 2)],
        "featdump_batch": cpu_batch(bare.backbone),
        "median": {k: round(statistics.median(v), 3) for k, v in rows.items()},
        "all": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "stage_cpu_ms": {k: round(v, 1) for k, v in stages.items()},
    }


def _megapixels(path: Path) -> float:
    from PIL import Image

    with Image.open(path) as im:
        return im.width * im.height / 1e6


def markdown(r: dict[str, Any]) -> list[str]:
    med, every = r["median"], r["all"]
    lo, mid, hi = r["megapixels"]
    small, large = r["images"]

    def cell(key: str, digits: int = 1) -> str:
        return f"{med[key]:.{digits}f} ({', '.join(f'{x:.{digits}f}' for x in every[key])})"

    lines = [
        f"### Photos on a CPU ({r['model']}, all levels, float16; {large} JPEGs of {lo}-{hi} MP, median {mid}; "
        f"featdump {large} - {small} images, whole processes; medians of {len(every['load'])} repetitions)",
        "",
        "| | img/s or ratio (each repetition) |",
        "|---|---|",
        *[f"| bare forward, bs {bs}, channels_last | {cell(f'bare bs {bs}')} |" for bs in SIZES],
        *[
            row
            for bs in r["runs"]
            for row in (
                f"| featdump extract --batch-size {bs}{' (the default)' if bs == r['featdump_batch'] else ''} | "
                f"{cell(f'featdump bs {bs}')} |",
                f"| **featdump --batch-size {bs} / best bare forward** | **{cell(f'featdump bs {bs} / best bare', 2)}** |",
                f"| featdump --batch-size {bs}, CPU-ms per image (whole process) | {cell(f'featdump bs {bs} CPU-ms/image')} |",
            )
        ],
        *[
            f"| bare forward CPU-ms / featdump CPU-ms per image, bs {bs} (skewed least by load) | "
            f"**{r['stage_cpu_ms'][f'forward (bs {bs})'] / med[f'featdump bs {bs} CPU-ms/image']:.2f}** |"
            for bs in r["runs"]
        ],
        f"| load average (1 min) | {cell('load', 2)} |",
        "",
        "| stage | CPU-ms per image |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in r["stage_cpu_ms"].items()],
        "",
    ]
    return lines


if __name__ == "__main__":
    import sys

    from featdump.run.process import tune_malloc

    tune_malloc()  # as featdump extract does, before torch allocates
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cache = Path(__file__).resolve().parent / "results" / "cache"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print("\n".join(markdown(measure(cache, reps, False, log))))
