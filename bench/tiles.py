"""Peak RSS of ``featdump extract --tiles`` over one very large image (default 20,000 x 20,000).

The image is a generated PNG of low entropy (smooth gradients: small on disk, 1.2 GB decoded);
featdump runs in a fresh process whose children's ``ru_maxrss`` is the peak (bench/memory.py).
What is held at once is the decoded image plus one batch of tiles, never all the tiles.

Example: python -m bench.tiles                       # resnet18, --tiles 512, 20,000 x 20,000
         python -m bench.tiles --side 4000 -- --pool avg --out-indices 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.memory import peak_rss


def make_png(path: Path, side: int) -> None:
    """A ``side`` x ``side`` RGB PNG: horizontal, vertical and diagonal gradients (compresses well)."""
    from PIL import Image, ImageChops

    ramp = Image.linear_gradient("L").resize((side, side), Image.Resampling.BILINEAR)
    flip = ramp.transpose(Image.Transpose.ROTATE_90)
    Image.merge("RGB", (ramp, flip, ImageChops.add(ramp, flip, scale=2.0))).save(path, compress_level=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20_000, help="image side in pixels")
    parser.add_argument("--tiles", default="512")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("extra", nargs="*", help="more extract flags, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "big"
        folder.mkdir()
        make_png(folder / "big.png", args.side)
        flags = ["--no-pretrained", "--device", "cpu", "--tiles", args.tiles, "--max-image-pixels", str(args.side**2), *args.extra]
        start = time.perf_counter()
        peak = peak_rss(args.model, folder, Path(tmp) / "out.h5", flags)
        seconds = time.perf_counter() - start
    decoded = 4 * args.side**2  # Pillow keeps RGB pixels in 4 bytes
    print(f"{args.model} --tiles {args.tiles} {' '.join(args.extra)} on a {args.side} x {args.side} PNG: peak RSS "
          f"{peak / 2**30:.2f} GiB (the decoded image: {decoded / 2**30:.2f} GiB), {seconds:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
