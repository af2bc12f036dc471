"""``featdump viz``: a picture of stored feature maps (Pillow and numpy only).

One row per chosen image: the input as the model saw it (resized and centre-cropped with the file's
preprocessing settings, read from its stored path if it is still there), then one tile per layer.
Spatial maps become a PCA of the channels mapped to RGB, fitted per layer across all shown
images (so colours are comparable along a column), and upsampled to a common tile size. Token
outputs with a known patch grid are shown as maps too; pooled vectors as a heat strip.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.store.describe import open_featdump
from featdump.store.format import read_inputs_attr, read_text

TILE = 160
PAD = 6
LABEL_H = 30
BACKGROUND = (255, 255, 255)
DEFAULT_IMAGES = 4

# A perceptually ordered colour ramp (viridis anchors) for heat strips.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


@dataclass
class VizResult:
    """What ``viz`` drew: the picture's path and size, the rows and layers, and inputs not found."""

    output: str
    width: int
    height: int
    rows: list[int]
    layers: list[str]
    inputs: dict[str, str] = field(default_factory=dict)  # stored path -> where it was read ("" = missing)

    @property
    def missing(self) -> list[str]:
        return [p for p, where in self.inputs.items() if not where]


# --------------------------------------------------------------------------- selection


def select_rows(paths: Sequence[str], wanted: Sequence[str] | None, num_images: int) -> list[int]:
    """``--image`` values (row numbers or stored paths, also a unique path ending) -> row numbers."""
    if num_images == 0:
        raise UsageError("the file holds no images yet (num_images is 0); nothing to draw")
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
        elif text in paths[:num_images]:
            row = list(paths[:num_images]).index(text)
        else:
            ends = [i for i, p in enumerate(paths[:num_images]) if p.endswith("/" + text) or Path(p).name == text]
            if len(ends) != 1:
                why = "matches several rows" if ends else "is not a stored path (see `featdump show FILE --paths`)"
                example = ", ".join(paths[:3])
                raise UsageError(f"--image {text!r} {why}; give a row number or a stored path, e.g. {example}")
            row = ends[0]
        if row not in rows:
            rows.append(row)
    return rows


def _roots_from_inputs(inputs: Sequence[str], h5_path: Path) -> list[Path]:
    """Folders where the stored (relative) paths may live, from the file's ``inputs`` attribute:
    INPUT folders, and the folders of list files and image files."""
    roots: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            roots.append(p)
        elif p.is_file():
            roots.append(p.parent)
    return _unique(roots + [Path.cwd(), h5_path.parent])


def _input_roots(command: str, h5_path: Path) -> list[Path]:
    """For files written before the ``inputs`` attribute: INPUT folders (or list files' folders)
    named in the recorded command, tried as given and relative to the output file's folder."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    roots: list[Path] = []
    for word in words[1:]:
        word = word.strip("[]'\",()")  # also featdump.extract('m', ['photos/'], ...) as the API records it
        if not word or word.startswith("-"):
            continue
        for base in (Path.cwd(), h5_path.parent):
            p = Path(word) if Path(word).is_absolute() else base / word
            if p.is_dir():
                roots.append(p)
            elif p.is_file() and p.suffix.lower() in (".txt", ".lst", ".list", ".csv", ".tsv"):
                roots.append(p.parent)
    return _unique(roots + [Path.cwd(), h5_path.parent])


def _unique(roots: Sequence[Path]) -> list[Path]:
    unique: list[Path] = []
    for r in roots:
        if r.resolve() not in [u.resolve() for u in unique]:
            unique.append(r)
    return unique


def find_input(stored: str, roots: Sequence[Path], anchors: Sequence[Path] = ()) -> Path | None:
    """Where a stored image path can be read now, or None.

    ``anchors`` are the run's INPUTs as absolute paths: a stored path that starts with an INPUT
    as written (several INPUTs: ``split/train/cat/1.jpg``; image files: the path as given) is found
    under the absolute INPUT whose trailing parts it starts with.
    """
    p = Path(stored)
    if p.is_absolute():
        return p if p.is_file() else None
    for root in roots:
        candidate = root / p
        if candidate.is_file():
            return candidate
    parts = p.parts
    for anchor in anchors:
        for i in range(min(len(parts), len(anchor.parts)), 0, -1):
            if anchor.parts[-i:] == parts[:i]:
                candidate = anchor.joinpath(*parts[i:])
                if candidate.is_file():
                    return candidate
    return None


# --------------------------------------------------------------------------- numbers -> colours


def pca_rgb(maps: Any) -> Any:
    """(K, C, H, W) feature maps -> (K, H, W, 3) uint8: first three principal components of the
    channels, fitted jointly over all K maps, each scaled by its 1st-99th percentile."""
    import numpy as np

    k, c, h, w = maps.shape
    x = np.nan_to_num(maps.astype(np.float64)).transpose(0, 2, 3, 1).reshape(-1, c)
    x = x - x.mean(axis=0, keepdims=True)
    if c == 1:
        comps = x
    elif x.shape[0] >= c:
        vals, vecs = np.linalg.eigh(x.T @ x)
        comps = x @ vecs[:, ::-1][:, :3]
    else:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        comps = x @ vt[:3].T
    if comps.shape[1] < 3:
        comps = np.concatenate([comps] + [comps[:, :1]] * (3 - comps.shape[1]), axis=1)
    out = np.empty_like(comps)
    for j in range(3):
        col = comps[:, j]
        # fix the sign so that the picture does not flip between runs: the larger tail is bright
        if abs(np.percentile(col, 1)) > abs(np.percentile(col, 99)):
            col = -col
        lo, hi = np.percentile(col, 1), np.percentile(col, 99)
        out[:, j] = np.clip((col - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
    return (out.reshape(k, h, w, 3) * 255).round().astype(np.uint8)


def heat(values: Any) -> Any:
    """Values in [0, 1] (any shape) -> uint8 RGB through the colour ramp."""
    import numpy as np

    v = np.clip(np.nan_to_num(values), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    ramp = np.asarray(_RAMP, dtype=np.float64)
    return (ramp[lo] * (1 - t) + ramp[lo + 1] * t).round().astype(np.uint8)


def vector_strips(vectors: Any) -> Any:
    """(K, C) pooled vectors -> (K, rows, cols, 3) heat grids, scaled jointly over the K vectors."""
    import numpy as np

    k, c = vectors.shape
    v = np.nan_to_num(vectors.astype(np.float64))
    lo, hi = np.percentile(v, 1), np.percentile(v, 99)
    v = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.full_like(v, 0.5)
    cols = max(1, math.ceil(math.sqrt(c)))
    rows = math.ceil(c / cols)
    grid = np.full((k, rows * cols), np.nan)
    grid[:, :c] = v
    rgb = heat(np.nan_to_num(grid, nan=0.0))
    rgb[:, c:] = 235  # unused cells: light grey
    return rgb.reshape(k, rows, cols, 3)


def as_maps(data: Any, attrs: dict[str, Any]) -> tuple[str, Any]:
    """Stored rows -> ("map", (K, C, H, W)) or ("vector", (K, C))."""
    import numpy as np

    if data.ndim == 4:
        return "map", data
    if data.ndim == 3 and attrs.get("part") == "prefix":  # --tokens both: <name>.prefix (K, P, D), no grid
        return "vector", np.asarray(data).mean(axis=1)
    if data.ndim == 3:  # tokens (K, T, D)
        prefix = int(attrs.get("num_prefix_tokens", 0) or 0)
        grid = attrs.get("grid")
        k, t, d = data.shape
        if grid is not None and len(grid) == 2 and int(grid[0]) * int(grid[1]) == t - prefix:
            patches = data[:, prefix:, :].transpose(0, 2, 1).reshape(k, d, int(grid[0]), int(grid[1]))
            return "map", patches
        side = int(round(math.sqrt(t - prefix)))
        if side * side == t - prefix:
            return "map", data[:, prefix:, :].transpose(0, 2, 1).reshape(k, d, side, side)
        return "vector", np.asarray(data).mean(axis=1)
    if data.ndim == 2:
        return "vector", data
    raise UsageError(f"cannot draw a dataset of shape {data.shape}")


# --------------------------------------------------------------------------- drawing


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def model_transform(attrs: dict[str, Any]) -> Any:
    """timm's eval transform built from the file's stored ``input_size``, ``interpolation``,
    ``crop_pct`` and ``crop_mode`` (timm's defaults where an older file lacks one)."""
    from featdump.model.layers import DataConfig

    cfg = {"input_size": attrs.get("input_size") or [3, 224, 224], "mean": attrs.get("mean") or (0.0, 0.0, 0.0)}
    cfg["std"] = attrs.get("std") or (1.0, 1.0, 1.0)
    for key in ("interpolation", "crop_pct", "crop_mode"):
        if attrs.get(key) not in (None, ""):
            cfg[key] = attrs[key]
    return DataConfig.from_timm(cfg).transform()


def _model_view(path: Path, split: Any, tile: tuple[int, int]) -> Any:
    """The image as the model saw it: the PIL half (resize, crop) of the stored transform."""
    from PIL import Image

    from featdump.data.decode import load_rgb

    img = split.pil_view(load_rgb(str(path)))
    return img.resize(tile, Image.Resampling.BICUBIC)


def _placeholder(tile: tuple[int, int], text: str) -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", tile, (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.line([(0, 0), (tile[0], tile[1])], fill=(200, 200, 200))
    draw.line([(0, tile[1]), (tile[0], 0)], fill=(200, 200, 200))
    draw.multiline_text((6, tile[1] // 2 - 12), text, fill=(90, 90, 90), font=_font())
    return img


def _clip(text: str, width: int, keep_end: bool = True) -> str:
    """Shorten a label to the tile width: module names keep their end (blocks.11.mlp.fc1), others their start."""
    max_chars = max(4, width // 6)
    if len(text) <= max_chars:
        return text
    return "…" + text[-(max_chars - 1) :] if keep_end else text[: max_chars - 1] + "…"


def check_picture(out: Path, tile: int) -> None:
    """The PNG to write (its folder must exist) and the tile size: usage errors before any reading."""
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o {out}: viz writes PNG pictures; name a .png file")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: folder {out.parent} does not exist")
    if not (4 <= tile <= 1024):
        raise UsageError(f"--tile must be 4..1024 pixels, not {tile}")


def render(
    path: str | Path,
    output: str | Path,
    images: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    tile: int = TILE,
    root: str | Path | None = None,
) -> VizResult:
    """Draw the chosen rows and layers of a featdump file into a PNG; returns what was drawn."""
    import numpy as np
    from PIL import Image, ImageDraw

    from featdump.store.describe import check_virtual
    from featdump.store.format import read_attr

    src = Path(path)
    out = Path(output)
    check_picture(out, tile)
    gone = check_virtual(src)  # before our own handle: HDF5 allows one kind of open per file
    h5 = open_featdump(src)
    try:
        attrs = {k: read_attr(v) for k, v in h5.attrs.items()}
        num_images = int(attrs.get("num_images", 0))
        paths = [read_text(p) for p in h5["paths"][:num_images]] if "paths" in h5 else []
        num_images = min(num_images, len(paths))
        stored = list(h5["features"].keys()) if "features" in h5 else []
        if layers:
            unknown = [name for name in layers if name not in stored]
            if unknown:
                raise UsageError(f"--layer {unknown[0]!r} is not in {src}; stored layers: {', '.join(stored)}")
            chosen = list(dict.fromkeys(layers))
        else:
            chosen = stored
        if not chosen:
            raise UsageError(f"{src} holds no feature datasets")
        rows = select_rows(paths, images, num_images)
        if gone and any(h5["features"][n].is_virtual for n in chosen):
            raise FeatdumpError(
                f"{src} is a merged file whose source file(s) cannot be read ({', '.join(gone[:3])}); "
                "put them back next to it"
            )
        order = sorted(rows)
        tiles: dict[str, list[Any]] = {}
        labels: dict[str, str] = {}
        for name in chosen:
            ds = h5["features"][name]
            dattrs = {k: read_attr(v) for k, v in ds.attrs.items()}
            data = np.stack([ds[r] for r in order])[[order.index(r) for r in rows]]
            kind, arr = as_maps(data, dattrs)
            stride = dattrs.get("reduction") or "-"
            labels[name] = f"{name}\nstride {stride} · {'x'.join(str(d) for d in ds.shape[1:])}"
            if kind == "map":
                rgb = pca_rgb(arr)
                tiles[name] = [Image.fromarray(x) for x in rgb]
            else:
                rgb = vector_strips(arr)
                tiles[name] = [Image.fromarray(x) for x in rgb]
                labels[name] += " pooled" if dattrs.get("pool", "none") != "none" else " vector"
    finally:
        h5.close()

    input_size = attrs.get("input_size") or [3, 224, 224]
    h_in, w_in = int(input_size[1]), int(input_size[2])
    tw = tile
    th = max(8, round(tile * h_in / w_in))
    inputs = read_inputs_attr(attrs.get("inputs"))  # merged files copy it from their shards
    anchors = [Path(i) for i in inputs or [] if Path(i).is_absolute()]
    if inputs is not None:
        roots = ([Path(root)] if root else []) + _roots_from_inputs(inputs, src)
    else:  # written before the inputs attribute: the INPUTs from the recorded command line
        roots = ([Path(root)] if root else []) + _input_roots(str(attrs.get("command", "")), src)
        roots += _input_roots(str(attrs.get("extract_command", "")), src)  # merged files: the shards' command
    split: Any = None
    found: dict[str, str] = {}
    cols = 1 + len(chosen)
    width = PAD + cols * (tw + PAD)
    height = PAD + LABEL_H + len(rows) * (th + LABEL_H // 2 + PAD)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for c, name in enumerate(["input"] + chosen):
        x = PAD + c * (tw + PAD)
        text = labels.get(name, "input (model's crop)")
        lines = [_clip(line, tw, keep_end=(i == 0 and c > 0)) for i, line in enumerate(text.split("\n"))]
        draw.multiline_text((x, PAD), "\n".join(lines), fill=(20, 20, 20), font=font, spacing=2)
    for r, row in enumerate(rows):
        y = PAD + LABEL_H + r * (th + LABEL_H // 2 + PAD)
        stored_path = paths[row]
        where = find_input(stored_path, roots, anchors)
        found[stored_path] = str(where) if where else ""
        if where is not None:
            try:
                if split is None:
                    from featdump.data.transform import SplitTransform

                    split = SplitTransform(model_transform(attrs))
                first = _model_view(where, split, (tw, th))
            except Exception as exc:  # noqa: BLE001 - an unreadable input is drawn as missing
                first = _placeholder((tw, th), f"cannot read input:\n{type(exc).__name__}")
        else:
            first = _placeholder((tw, th), "input not found:\n" + _clip(stored_path, tw))
        canvas.paste(first, (PAD, y))
        for c, name in enumerate(chosen, start=1):
            img = tiles[name][r]
            resample = Image.Resampling.NEAREST if img.size[0] < tw else Image.Resampling.BILINEAR
            canvas.paste(img.resize((tw, th), resample), (PAD + c * (tw + PAD), y))
        draw.text((PAD, y + th + 1), _clip(f"#{row} {stored_path}", width - 2 * PAD), fill=(60, 60, 60), font=font)
    canvas.save(out, format="PNG", optimize=True)
    return VizResult(str(out), width, height, rows, chosen, found)
