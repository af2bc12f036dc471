"""``featdump viz --overlay``: a layer's PCA map drawn over the original image, cell by cell.

Each cell is painted into its box in original-image pixels (:meth:`FeatureFile.pixel_boxes`), so the
map lines up with the whole picture whatever the crop mode (``center``: the cropped-off margins stay
bare; ``border``: padding cells are not drawn).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from featdump.errors import UsageError
from featdump.store.check import input_kind
from featdump.store.findinput import locate_rows, read_found
from featdump.store.reader import FeatureFile
from featdump.viz import (
    BACKGROUND,
    LABEL_H,
    PAD,
    TILE,
    VizResult,
    check_picture,
    placeholder,
    select_rows,
    where_found,
)
from featdump.vizdraw import fit_text, label_font, pca_each, pca_rgb

ALPHA = 0.6  # weight of the feature colours over the photo


def cell_index(lo: Any, hi: Any, coords: Any) -> Any:
    """For pixel-centre coordinates, the index of the cell whose ``[lo, hi)`` holds each one (-1: none)."""
    out = np.full(coords.shape, -1, dtype=np.int64)
    for k in range(len(lo)):  # cells along one axis: at most a few hundred
        if np.isnan(lo[k]):
            continue
        out[(coords >= lo[k]) & (coords < hi[k])] = k
    return out


def paint(photo: Any, boxes: Any, colours: Any, alpha: float = ALPHA) -> Any:
    """``photo`` (PIL, original size) with ``colours`` (H, W, 3) blended into the cells' ``boxes``."""
    base = np.asarray(photo.convert("RGB"), dtype=np.float64)
    h, w = base.shape[:2]
    finite = ~np.isnan(boxes).any(axis=-1)
    if not finite.any():
        return photo.convert("RGB")
    r0, c0 = (int(v[0]) for v in np.nonzero(finite))  # a cell in the image: its row and column hold the edges
    iy = cell_index(boxes[:, c0, 0], boxes[:, c0, 2], np.arange(h) + 0.5)
    ix = cell_index(boxes[r0, :, 1], boxes[r0, :, 3], np.arange(w) + 0.5)
    inside = (iy[:, None] >= 0) & (ix[None, :] >= 0)
    colour = colours[iy.clip(0)[:, None], ix.clip(0)[None, :]].astype(np.float64)
    out = np.where(inside[..., None], (1 - alpha) * base + alpha * colour, base)
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def _fit(img: Any, side: int, pad: bool = True) -> Any:
    """``img`` scaled to fit a ``side`` x ``side`` tile (aspect kept), centred on the background
    (``pad=False``: only scaled)."""
    scale = side / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    if not pad:
        return img.resize(size, Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (side, side), BACKGROUND)
    tile.paste(img.resize(size, Image.Resampling.BILINEAR), ((side - size[0]) // 2, (side - size[1]) // 2))
    return tile


def render_overlay(
    path: str | Path,
    output: str | Path,
    images: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    tile: int = TILE,
    root: str | Path | None = None,
    random: int | None = None,
    seed: int | None = None,
) -> VizResult:
    """Per chosen row: the original image, then each chosen spatial layer's PCA map over it."""
    out = Path(output)
    check_picture(out, tile)
    with FeatureFile(path) as f:
        if "geometry" not in f.h5:
            raise UsageError(f"--overlay: {path} holds no /geometry (made by an older featdump); extract it again")
        ragged = {n for n in f.layers if f.attrs(n).get("layout") == "ragged"}  # each row at its own grid, its own PCA
        spatial = [n for n in f.layers if (len(f[n].shape) == 4 or n in ragged) and f.attrs(n).get("pixel_grid") != []]  # []: no places (--process)
        chosen = list(dict.fromkeys(layers)) if layers else spatial
        bad = [n for n in chosen if n not in spatial] or ([] if chosen else f.layers[:1])
        if bad:
            raise UsageError(
                f"--overlay draws spatial (N, C, H, W) layers; {bad[0]!r} is not one"
                + (f" (spatial layers: {', '.join(spatial)})" if spatial else f" ({path} holds none)")
            )
        rows = select_rows(f.paths, images, f.num_images, random, seed)
        colours = {n: (pca_each if n in ragged else pca_rgb)(f.numpy(n, rows)) for n in chosen}
        boxes = {(n, r): f.pixel_boxes(n, r) for n in chosen for r in rows}
        paths, bound = f.paths, f.meta.get("max_image_pixels") or None
        wanted, why = locate_rows(f, rows, root)
        why += "; pass --root DIR" if why and input_kind(f.meta) == "files" else ""
    width = PAD + (1 + len(chosen)) * (tile + PAD)
    height = PAD + LABEL_H + len(rows) * (tile + LABEL_H // 2 + PAD)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    for c, name in enumerate(["original"] + chosen):
        draw.text((PAD + c * (tile + PAD), PAD), fit_text(name, tile), fill=(20, 20, 20), font=font)
    for r, row in enumerate(rows):
        y = PAD + LABEL_H + r * (tile + LABEL_H // 2 + PAD)
        try:
            photo = read_found(wanted[r], bound)
        except Exception:  # noqa: BLE001 - an unreadable input is drawn as missing
            photo = None
        tiles = [placeholder((tile, tile), "input not found:\n" + fit_text(paths[row], tile))] * (1 + len(chosen))
        if photo is not None:
            small = _fit(photo, tile, pad=False)  # paint at the tile's resolution: boxes scaled alike
            k = small.size[0] / photo.size[0]
            tiles = [_fit(photo, tile)] + [_fit(paint(small, boxes[(n, row)] * k, colours[n][r]), tile) for n in chosen]
        for c, img in enumerate(tiles):
            canvas.paste(img, (PAD + c * (tile + PAD), y))
        draw.text((PAD, y + tile + 1), fit_text(f"#{row} {paths[row]}", width - 2 * PAD), fill=(60, 60, 60), font=font)
    canvas.save(out, format="PNG", optimize=True)
    found = {paths[row]: where_found(w) for row, w in zip(rows, wanted, strict=True)}
    return VizResult(str(out), width, height, rows, chosen, found, why)
