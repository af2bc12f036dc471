"""The CPU batch size: the bare forward pass of several backbones at batch sizes 4-64, measured
interleaved, against the batch size featdump picks on a CPU (``featdump.run.device.cpu_batch``).

Bare: the timm model alone (random weights, every level, channels_last, inference mode, this
machine's cores as torch threads, OMP_WAIT_POLICY=PASSIVE and glibc malloc tuned as in ``featdump
extract``) on real photos decoded and transformed beforehand. Each round times one batch of every
size in a rotating order, so that load from other jobs (this machine is shared) falls on all sizes
alike; a size's rate is divided by the best rate of the same round before the median over rounds.
CPU-ms per image is the process's CPU time over the images of the batch.

Example: python -m bench.cpubatch --rounds 8
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as featdump extract sets it

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ("resnet50", "convnext_atto", "convnext_tiny", "tf_efficientnet_lite0", "vit_tiny_patch16_224")
SIZES = (4, 8, 16, 32, 64)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(models: tuple[str, ...], sizes: tuple[int, ...], rounds: int, photos: list[Path], log: Any) -> dict[str, Any]:
    import torch

    from bench.throughput import Bare, ModelCase, predecode, torch_threads
    from featdump.run.device import cpu_batch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    device = torch.device("cpu")
    rates: dict[str, dict[int, list[float]]] = {m: {s: [] for s in sizes} for m in models}
    ratios: dict[str, dict[int, list[float]]] = {m: {s: [] for s in sizes} for m in models}
    cpu_ms: dict[str, dict[int, list[float]]] = {m: {s: [] for s in sizes} for m in models}
    picked: dict[str, int] = {}  # featdump's batch for each model
    with torch_threads(cpus):
        for m in models:
            bare = Bare(ModelCase(m, m, None, "float32", None), device)
            bare.set_format(True)
            picked[m] = cpu_batch(bare.backbone)
            tensors = predecode(bare, photos)
            batch = torch.stack([tensors[i % len(tensors)] for i in range(max(sizes))])
            for s in sizes:
                bare.forward(batch[:s])  # warm-up: allocations, kernel choice
            for r in range(rounds):  # one batch of each size per round, rotating: load hits all sizes alike
                shift = r % len(sizes)
                got: dict[int, float] = {}
                for s in sizes[shift:] + sizes[:shift]:
                    c0, t0 = _cpu(), time.perf_counter()
                    bare.forward(batch[:s])
                    wall, cpu = time.perf_counter() - t0, _cpu() - c0
                    got[s] = s / wall
                    rates[m][s].append(s / wall)
                    cpu_ms[m][s].append(1000 * cpu / s)
                for s in sizes:
                    ratios[m][s].append(got[s] / max(got.values()))
            log(f"cpubatch {m}, load {os.getloadavg()[0]:.2f}: "
                + " ".join(f"{s}:{statistics.median(rates[m][s]):.1f}" for s in sizes))  # fmt: skip
            del bare, tensors, batch
    rows = []
    for m in models:
        med = {s: statistics.median(ratios[m][s]) for s in sizes}
        best = max(sizes, key=lambda s: med[s])
        chosen = picked[m] if picked[m] in sizes else None
        rows.append({
            "model": m,
            "img_s_median": {s: round(statistics.median(rates[m][s]), 2) for s in sizes},
            "of_best_median": {s: round(med[s], 3) for s in sizes},
            "cpu_ms_per_image": {s: round(statistics.median(cpu_ms[m][s]), 1) for s in sizes},
            "best": best,
            "featdump": picked[m],
            "featdump_of_best": round(med[chosen], 3) if chosen else None,
        })  # fmt: skip
    return {"cpus": cpus, "rounds": rounds, "sizes": list(sizes), "rows": rows}


def markdown(result: dict[str, Any]) -> list[str]:
    sizes = result["sizes"]
    lines = [
        f"### CPU batch size (bare forward, channels_last, {result['cpus']} threads; share of the model's best "
        f"rate, median of {result['rounds']} interleaved rounds)",
        "",
        "| model | " + " | ".join(f"bs {s}" for s in sizes) + " | best | featdump's | featdump / best | CPU-ms/image at featdump's |",
        "|---" * (len(sizes) + 5) + "|",
    ]
    for r in result["rows"]:
        cells = [f"{r['of_best_median'][s]:.2f} ({r['img_s_median'][s]:.1f}/s)" for s in sizes]
        ms = r["cpu_ms_per_image"].get(r["featdump"], "–")
        lines.append(f"| {r['model']} | " + " | ".join(cells)
                     + f" | {r['best']} | {r['featdump']} | **{r['featdump_of_best'] or '–'}** | {ms} |")  # fmt: skip
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpubatch", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--rounds", type=int, default=8, help="one batch of every size per round")
    p.add_argument("--json", type=Path, default=None, help="also save the numbers here")
    args = p.parse_args(argv)
    from bench.images import make_jpegs
    from featdump.run.process import tune_malloc

    tune_malloc()  # before torch allocates, as in featdump extract

    photos = make_jpegs(Path(__file__).resolve().parent / "results" / "cache" / "jpegs", 16)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load = os.getloadavg()
    result = measure(tuple(args.models.split(",")), tuple(int(s) for s in args.sizes.split(",")), args.rounds, photos, log)
    result["load"] = [round(load[0], 2), round(os.getloadavg()[0], 2)]
    print("\n".join(markdown(result)) + f"load average {result['load'][0]} -> {result['load'][1]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
