"""Real JPEGs of mixed sizes, made once from scikit-image's bundled photos into a cache folder."""

from __future__ import annotations

import random
from pathlib import Path

# Photos that ship inside scikit-image (no download); grayscale ones stay grayscale JPEGs.
PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "cat", "colorwheel", "camera", "coins",
)  # fmt: skip
MIXED = (0.05, 0.15, 0.3, 0.6, 1.0, 1.5)  # megapixels (times 0.7-1.0) of the default set
PHOTOS_MP = (0.15, 0.3, 0.6, 1.0, 2.0, 3.0, 4.5)  # camera-sized photos too (bench/photos.py)
MIN_SIDE = 160


def _photos() -> list[object]:
    import skimage.data
    from PIL import Image

    out = []
    for name in PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo that needs a download is simply not used
            continue
        out.append(Image.fromarray(arr))
    if not out:
        raise RuntimeError("scikit-image has no bundled photos here; pip install scikit-image")
    return out


def make_jpegs(folder: Path, count: int, seed: int = 0, megapixels: tuple[float, ...] = MIXED) -> list[Path]:
    """``count`` JPEGs (cached by name, so one folder per ``megapixels``): random crops of the
    photos, resized to sizes from ~160 px a side up to the largest of ``megapixels`` with mixed
    aspect ratios, quality 80-95."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:05d}.jpg" for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    photos = _photos()
    for i in missing:
        rng = random.Random(seed * 100_003 + i)
        src = photos[i % len(photos)]
        w, h = src.size  # type: ignore[attr-defined]
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = src.crop((x0, y0, x0 + cw, y0 + ch))  # type: ignore[attr-defined]
        pixels = rng.choice(megapixels) * 1e6 * rng.uniform(0.7, 1.0)
        aspect = rng.uniform(0.6, 1.8)
        tw = max(MIN_SIDE, int((pixels * aspect) ** 0.5))
        th = max(MIN_SIDE, int(pixels / tw))
        while tw * th > max(megapixels) * 1e6:
            tw, th = int(tw * 0.95), int(th * 0.95)
        img = crop.resize((tw, th), resample=3)
        tmp = paths[i].with_suffix(".tmp")
        img.save(tmp, format="JPEG", quality=rng.randint(80, 95))
        tmp.replace(paths[i])
    return paths


def link_many(folder: Path, sources: list[Path], count: int) -> Path:
    """A folder of ``count`` distinct names (symlinks cycling over ``sources``): many inputs, little disk."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"l{i:06d}.jpg"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)].resolve())
    for extra in sorted(folder.glob("l*.jpg"))[count:]:
        extra.unlink()
    return folder
