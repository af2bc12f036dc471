"""``featdump viz``: a picture of stored feature maps (Pillow and numpy only). What it draws is the
command's help (featdump/cli/files.py); inputs are found again by featdump/store/findinput.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from featdump.data.lookup import Wanted
from featdump.data.tiles import tile_view
from featdump.errors import UsageError
from featdump.store.check import input_kind
from featdump.store.findinput import locate_rows, read_found
from featdump.store.reader import FeatureFile
from featdump.vizdraw import (
    PALETTE,
    SCATTER_MIN,
    bar_strips,
    fit_text,
    label_font,
    pca_each,
    pca_rgb,
    pca_scatter,
)

TILE = 160
PAD = 6
LABEL_H = 30
BACKGROUND = (255, 255, 255)
DEFAULT_IMAGES = 4


@dataclass
class VizResult:
    """What ``viz`` drew: the picture's path and size, the rows and layers, and inputs not found."""

    output: str
    width: int
    height: int
    rows: list[int]
    layers: list[str]
    inputs: dict[str, str] = field(default_factory=dict)  # stored path -> where it was read ("" = missing)
    why: str = ""  # why an input is missing (featdump/store/findinput.py)

    @property
    def missing(self) -> list[str]:
        return [p for p, where in self.inputs.items() if not where]


# --------------------------------------------------------------------------- selection


def select_rows(
    paths: Sequence[str],
    wanted: Sequence[str] | None,
    num_images: int,
    random: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """The rows to draw: ``--image`` values (row numbers or stored paths, also a unique path ending),
    or ``--random N`` rows drawn without replacement among the file's ``num_images`` committed rows
    with ``--seed S`` (default 0), returned in row order; neither: the first few rows."""
    if seed is not None and random is None:
        raise UsageError(f"--seed {seed} seeds the picks of --random N; give --random N too (or drop --seed)")
    if random is not None:
        if wanted:
            raise UsageError("--random and --image both choose the images; give one of them")
        if random <= 0:
            raise UsageError(f"--random {random}: give how many images to pick (1 or more)")
        if seed is not None and seed < 0:
            raise UsageError(f"--seed {seed}: give a seed of 0 or more")
    if num_images == 0:
        raise UsageError("the file holds no images yet (num_images is 0); nothing to draw")
    if random is not None:
        rng = np.random.default_rng(0 if seed is None else seed)
        picks = rng.choice(num_images, size=min(random, num_images), replace=False)
        return sorted(int(p) for p in picks)
    if not wanted:
        return list(range(min(DEFAULT_IMAGES, num_images)))
    rows: list[int] = []
    for w in wanted:
        text = str(w).strip()
        if text.lstrip("-").isdigit():
            row = int(text)
            if not -num_images <= row < num_images:
                raise UsageError(f"--image {row}: the file has rows 0..{num_images - 1}")
            row %= num_images
        else:  # the stored path (a --tiles file stores it once per tile), else a unique ending
            stored = paths[:num_images]
            hits = [i for i, p in enumerate(stored) if p == text] or [
                i for i, p in enumerate(stored) if p.endswith("/" + text) or Path(p).name == text
            ]
            if len(hits) != 1:
                shown = ", ".join(map(str, hits[:5])) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
                why = f"matches rows {shown}" if hits else "is not a stored path (see `featdump show FILE --paths`)"
                example = ", ".join(paths[:3])
                raise UsageError(f"--image {text!r} {why}; give a row number or a stored path, e.g. {example}")
            row = hits[0]
        if row not in rows:
            rows.append(row)
    return rows


def as_maps(data: Any, attrs: dict[str, Any]) -> tuple[str, Any]:
    """Stored rows -> ("map", (K, C, H, W)) or ("vector", (K, C))."""
    if data.ndim == 4:
        return "map", data
    if data.ndim == 3 and attrs.get("part") != "prefix":  # tokens (K, T, D); --tokens both: <name>.prefix has no grid
        prefix = int(attrs.get("num_prefix_tokens", 0) or 0)
        k, t, d = data.shape
        grid = attrs.get("grid")
        if grid is None or len(grid) != 2 or int(grid[0]) * int(grid[1]) != t - prefix:
            grid = [round(math.sqrt(t - prefix))] * 2  # no stored grid: a square one, where the tokens make one
        if int(grid[0]) * int(grid[1]) == t - prefix:
            return "map", data[:, prefix:, :].transpose(0, 2, 1).reshape(k, d, int(grid[0]), int(grid[1]))
    if data.ndim == 3:  # no grid: the tokens averaged
        return "vector", np.asarray(data).mean(axis=1)
    if data.ndim == 2:
        return "vector", data
    raise UsageError(f"cannot draw a dataset of shape {data.shape}")


# --------------------------------------------------------------------------- drawing


def where_found(w: Wanted) -> str:
    """Where a row's image was found ("" = not found): its file or URL, else (bytes) its stored path."""
    return (w.found[0].source or w.path) if w.found else ""


def placeholder(tile: tuple[int, int], text: str) -> Any:
    img = Image.new("RGB", tile, (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.line([(0, 0), (tile[0], tile[1])], fill=(200, 200, 200))
    draw.line([(0, tile[1]), (tile[0], 0)], fill=(200, 200, 200))
    draw.multiline_text((6, tile[1] // 2 - 12), text, fill=(90, 90, 90), font=label_font())
    return img


def check_picture(out: Path, tile: int) -> None:
    """The PNG to write (its folder must exist) and the tile size: usage errors before any reading."""
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o {out}: viz writes PNG pictures; name a .png file")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: folder {out.parent} does not exist")
    if not (4 <= tile <= 1024):
        raise UsageError(f"--tile must be 4..1024 pixels, not {tile}")


def input_tile(w: Wanted, attrs: dict[str, Any], size: tuple[int, int]) -> Any:
    """The row's input as its model saw it (``--tiles``: its tile; a size mode: the whole image; else
    timm's eval crop with the file's preprocessing settings) at ``size``, or a placeholder saying why not."""
    if not w.found:
        return placeholder(size, "input not found:\n" + fit_text(w.path, size[0]))
    try:
        seen = read_found(w, attrs.get("max_image_pixels") or None)
        if len(attrs.get("tiles", "")):
            seen = tile_view(attrs, seen, w.tile)
        elif not attrs.get("img_size_mode"):
            from featdump.data.transform import SplitTransform
            from featdump.model.layers import DataConfig

            seen = SplitTransform(DataConfig.from_timm(attrs).transform()).pil_view(seen)
        return seen.resize(size, Image.Resampling.BICUBIC)
    except Exception as exc:  # noqa: BLE001 - an unreadable input is drawn as missing
        return placeholder(size, f"cannot read input:\n{type(exc).__name__}")


def render(
    path: str | Path,
    output: str | Path,
    images: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    tile: int = TILE,
    root: str | Path | None = None,
    random: int | None = None,
    seed: int | None = None,
) -> VizResult:
    """Draw the chosen rows (:func:`select_rows`) and layers of a featdump file into a PNG."""
    out = Path(output)
    check_picture(out, tile)
    with FeatureFile(path) as f:
        if unknown := [name for name in layers or () if name not in f.layers]:
            raise UsageError(f"--layer {unknown[0]!r} is not in {path}; stored layers: {', '.join(f.layers)}")
        chosen = list(dict.fromkeys(layers)) if layers else f.layers
        if not chosen:
            raise UsageError(f"{path} holds no feature datasets")
        rows = select_rows(f.paths, images, f.num_images, random, seed)
        attrs, paths = f.meta, f.paths
        _, h_in, w_in = (int(v) for v in attrs["input_size"])
        tw, th = tile, max(8, round(tile * h_in / w_in))
        colours = [PALETTE[r % len(PALETTE)] for r in range(len(rows))]
        tiles: dict[str, list[Any]] = {}
        vectors: dict[str, Any] = {}  # pooled layers: bars, and a scatter with 3 rows or more
        labels: dict[str, str] = {}
        for name in chosen:
            dattrs = f.attrs(name)
            stride = dattrs.get("reduction") or "-"
            labels[name] = f"{name}\nstride {stride} · {'x'.join(str(d) for d in f[name].shape[1:])}"
            if dattrs.get("layout") == "ragged":  # each row at its own grid, its own PCA
                labels[name] += "xhxw"
                tiles[name] = [Image.fromarray(x) for x in pca_each(f.numpy(name, rows))]
                continue
            kind, arr = as_maps(f.numpy(name, rows), dattrs)
            if kind == "map":
                tiles[name] = [Image.fromarray(x) for x in pca_rgb(arr)]
            else:
                vectors[name], tiles[name] = arr, bar_strips(arr, colours, (tw, th))
                labels[name] += " pooled" if dattrs.get("pool", "none") != "none" else " vector"
        wanted, why = locate_rows(f, rows, root)
        why += "; pass --root DIR" if why and input_kind(f.meta) == "files" else ""

    found = {paths[row]: where_found(w) for row, w in zip(rows, wanted, strict=True)}
    width = PAD + (1 + len(chosen)) * (tw + PAD)
    scatter = len(rows) >= SCATTER_MIN and bool(vectors)
    band = th + LABEL_H // 2 + PAD
    height = PAD + LABEL_H + (len(rows) + scatter) * band
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    what = "whole image" if attrs.get("img_size_mode") else "the row's tile" if len(attrs.get("tiles", "")) else "model's crop"
    for c, name in enumerate(["input"] + chosen):
        text = labels.get(name, f"input ({what})")
        lines = [fit_text(line, tw, keep_end=(i == 0 and c > 0)) for i, line in enumerate(text.split("\n"))]
        draw.multiline_text((PAD + c * (tw + PAD), PAD), "\n".join(lines), fill=(20, 20, 20), font=font, spacing=2)
    for r, row in enumerate(rows):
        y = PAD + LABEL_H + r * band
        canvas.paste(input_tile(wanted[r], attrs, (tw, th)), (PAD, y))
        for c, name in enumerate(chosen, start=1):
            img = tiles[name][r]
            resample = Image.Resampling.NEAREST if img.size[0] < tw else Image.Resampling.BILINEAR
            canvas.paste(img.resize((tw, th), resample), (PAD + c * (tw + PAD), y))
        swatch = 10 if vectors else 0
        if vectors:  # the row's colour, as in its bars and its scatter dot
            draw.rectangle([PAD, y + th + 3, PAD + 7, y + th + 10], fill=colours[r])
        text = fit_text(f"#{row} {paths[row]}", width - 2 * PAD - swatch)
        draw.text((PAD + swatch, y + th + 1), text, fill=(60, 60, 60), font=font)
    if scatter:
        y = PAD + LABEL_H + len(rows) * band
        caption = ["2-D PCA of the", "pooled vectors", "of these images:", "one dot each, #row"]
        draw.multiline_text((PAD, y), "\n".join(fit_text(t, tw, keep_end=False) for t in caption), fill=(20, 20, 20), font=font)
        for c, name in enumerate(chosen, start=1):
            if name in vectors:
                canvas.paste(pca_scatter(vectors[name], rows, colours, (tw, th)), (PAD + c * (tw + PAD), y))
    canvas.save(out, format="PNG", optimize=True)
    return VizResult(str(out), width, height, rows, chosen, found, why)
