"""Batching by shape: rows per second at ``--img-size long:L`` on mixed-aspect photos.

Four measures over the same JPEGs (0.05-1.5 MP, aspect 0.6-1.8, bench/images.py), one model at
random weights (resnet50, last level), in this process:

- featdump ``--img-size long:L`` (each image at its own aspect, batched by shape within windows);
- featdump ``--img-size L`` (one square crop per image: every batch full);
- a bare timm loop, one image at a time, on the same ``long:L`` pixels (PIL decode, torchvision's
  ``Resize((h, w))``, to-tensor, normalise, ``features_only`` forward);
- the same loop at the fixed square (timm's eval transform).

The target: featdump at ``long:L`` >= 1.5 x the one-image loop at ``long:L``. Also reported: how many
distinct shapes the photos give and the mean number of images per forward (the bucketing's yield).

    python -m bench.anysize [--side 512] [--images 64]      # or: make bench (section "anysize")
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as featdump extract sets it

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "resnet50"


def _loop(paths: list[Path], side: int, mode: bool) -> float:
    """Rows per second of timm alone, one image at a time (``mode``: long:side, else the square)."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms

    torch.manual_seed(0)
    model = timm.create_model(MODEL, features_only=True, out_indices=(-1,)).eval()
    cfg = resolve_data_config({"input_size": (3, side, side)}, model=model)
    square = create_transform(**cfg, is_training=False)
    unit = 32

    def own(img: Any) -> Any:
        scale = side / max(img.height, img.width)
        h, w = (max(unit, math.floor(v * scale / unit + 0.5) * unit) for v in (img.height, img.width))
        resize = transforms.Resize((h, w), interpolation=str_to_interp_mode(cfg["interpolation"]))
        return transforms.Normalize(cfg["mean"], cfg["std"])(transforms.ToTensor()(resize(img)))

    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            img = Image.open(path).convert("RGB")
            model((own(img) if mode else square(img))[None])
    return len(paths) / (time.perf_counter() - start)


def _featdump(paths: list[Path], size: str, batch: int, out: Path) -> float:
    """Rows per second of ``featdump.extract`` over ``paths`` less a run over their first quarter
    (the start-up, building the model, cancels out in the difference)."""
    import featdump

    def seconds(some: list[Path]) -> float:
        start = time.perf_counter()
        featdump.extract(MODEL, [str(p) for p in some], out, img_size=size, out_indices=(-1,), pretrained=False,
                         batch_size=batch, overwrite=True, quiet=True, space_check=False)  # fmt: skip
        return time.perf_counter() - start

    few = paths[: len(paths) // 4]
    return (len(paths) - len(few)) / (seconds(paths) - seconds(few))


def shapes(paths: list[Path], side: int) -> dict[tuple[int, int], int]:
    """How many of the photos resize to each ``(h, w)`` at long:side (resnet50's unit: 32)."""
    from PIL import Image

    from featdump.model.layers import ResizeToUnit

    to_unit = ResizeToUnit(("long", side), 32, 2048, "bicubic")
    counts: dict[tuple[int, int], int] = {}
    for p in paths:
        with Image.open(p) as img:
            shape = to_unit.shape_for(img.height, img.width)
        counts[shape] = counts.get(shape, 0) + 1
    return counts


def measure(cache: Path, side: int, images: int, batch: int, reps: int = 3, log: Any = print) -> dict[str, Any]:
    """Each of the four measures ``reps`` times, interleaved (a busy machine slows them alike); medians."""
    from bench.images import make_jpegs

    paths = make_jpegs(cache / "anysize", images, seed=7)
    every: dict[str, list[float]] = {"featdump long": [], "featdump square": [], "loop long": [], "loop square": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            every["featdump long"].append(_featdump(paths, f"long:{side}", batch, Path(tmp) / "long.h5"))
            every["loop long"].append(_loop(paths, side, True))
            every["featdump square"].append(_featdump(paths, str(side), batch, Path(tmp) / "square.h5"))
            every["loop square"].append(_loop(paths, side, False))
            log(f"anysize {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in every.items()) + " rows/s")
    r: dict[str, Any] = {k: statistics.median(v) for k, v in every.items()}
    ratios = [a / b for a, b in zip(every["featdump long"], every["loop long"], strict=True)]
    window = 4 * batch  # featdump/data/batching.py: WINDOW batches of refs, batched by shape
    forwards = sum(-(-n // batch) for n in _per_window(paths, side, window))
    return {**r, "all": every, "side": side, "images": images, "batch": batch, "shapes": len(shapes(paths, side)),
            "rows per forward": images / forwards, "ratio": statistics.median(ratios), "ratios": ratios}  # fmt: skip


def _per_window(paths: list[Path], side: int, window: int) -> list[int]:
    """The sizes of the shape groups featdump forms, window by window."""
    sizes: list[int] = []
    for i in range(0, len(paths), window):
        sizes += shapes(paths[i : i + window], side).values()
    return sizes


def markdown(r: dict[str, Any]) -> list[str]:
    side = r["side"]
    def cell(key: str) -> str:
        return f"{r[key]:.2f} ({', '.join(f'{x:.2f}' for x in r['all'][key])})"

    return [
        f"### Any resolution: --img-size long:{side} ({MODEL}, last level, random weights; {r['images']} mixed-aspect "
        f"JPEGs, {r['shapes']} distinct shapes; --batch-size {r['batch']}; medians of {len(r['ratios'])} interleaved repetitions)",
        "",
        "| | rows/s (each repetition) |",
        "|---|---|",
        f"| featdump --img-size long:{side} (batched by shape, {r['rows per forward']:.1f} rows per forward) | {cell('featdump long')} |",
        f"| featdump --img-size {side} (square crop) | {cell('featdump square')} |",
        f"| timm, one image at a time, long:{side} | {cell('loop long')} |",
        f"| timm, one image at a time, {side}x{side} | {cell('loop square')} |",
        f"| **featdump long:{side} / one-image loop** (target >= 1.5) | **{r['ratio']:.2f}** ({', '.join(f'{x:.2f}' for x in r['ratios'])}) |",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.anysize", description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featdump-bench")
    args = p.parse_args(argv)
    print("\n".join(markdown(measure(args.cache, args.side, args.images, args.batch_size, args.reps))))


if __name__ == "__main__":
    main()
