"""Pictures of numbers for ``viz``: PCA of channels (RGB maps, 2-D scatters), bar strips of
pooled vectors, and the text helpers they label with (Pillow and numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_BARS = 16  # channels in a pooled vector's bar strip, at most
SCATTER_MIN = 3  # images shown before a pooled layer gets a PCA scatter panel
# One colour per shown image (Tableau 10): its bars, its dot in the scatter and its row's swatch.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
PANEL = (248, 248, 248)


def principal_components(x: Any, k: int) -> tuple[Any, Any]:
    """(n, C) rows -> their scores on the first ``k`` principal components (n, <=k) and each
    component's share of the variance. Signs are fixed (the larger tail of each score is
    positive), so a picture does not flip between runs or LAPACK builds."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    x = x - x.mean(axis=0, keepdims=True)
    n, c = x.shape
    if n >= c:
        vals, vecs = np.linalg.eigh(x.T @ x)
        comps, var = x @ vecs[:, ::-1][:, :k], vals[::-1][:k].clip(0)
    else:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        comps, var = x @ vt[:k].T, (s**2)[:k]
    total = float((x * x).sum())
    share = var / total if total > 0 else np.zeros_like(var)
    for j in range(comps.shape[1]):
        col = comps[:, j]
        if abs(np.percentile(col, 1)) > abs(np.percentile(col, 99)):
            comps[:, j] = -col
    return comps, share


def pca_rgb(maps: Any) -> Any:
    """(K, C, H, W) feature maps -> (K, H, W, 3) uint8: first three principal components of the
    channels, fitted jointly over all K maps, each scaled by its 1st-99th percentile."""
    k, c, h, w = maps.shape
    comps, _ = principal_components(maps.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, c), 3)
    if comps.shape[1] < 3:
        comps = np.concatenate([comps] + [comps[:, :1]] * (3 - comps.shape[1]), axis=1)
    out = np.empty_like(comps)
    for j in range(3):
        col = comps[:, j]
        lo, hi = np.percentile(col, 1), np.percentile(col, 99)
        out[:, j] = np.clip((col - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
    return (out.reshape(k, h, w, 3) * 255).round().astype(np.uint8)


def pca_each(maps: Any) -> list[Any]:
    """A ragged layer's rows (C, h_i, w_i) -> one (h_i, w_i, 3) uint8 picture each, each row's own PCA."""
    return [pca_rgb(m[None])[0] for m in maps]


def pca_2d(vectors: Any) -> tuple[Any, Any]:
    """(K, C) pooled vectors -> (K, 2) coordinates on their first two principal components (fitted
    over the K vectors; a missing component is 0) and the two components' shares of the variance."""
    comps, share = principal_components(vectors, 2)
    return np.pad(comps, ((0, 0), (0, 2 - comps.shape[1]))), np.pad(share, (0, 2 - len(share)))


def top_channels(vectors: Any, k: int) -> Any:
    """(K, C) vectors -> (K, k) channel numbers of each vector's ``k`` largest magnitudes, largest
    first (ties: the lower channel first)."""
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
    return np.argsort(-np.abs(v), axis=1, kind="stable")[:, : min(k, v.shape[1])]


def label_font() -> Any:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def fit_text(text: str, width: int, keep_end: bool = True) -> str:
    """Shorten a label to the tile width: module names keep their end (blocks.11.mlp.fc1), others their start."""
    max_chars = max(4, width // 6)
    if len(text) <= max_chars:
        return text
    return "…" + text[-(max_chars - 1) :] if keep_end else text[: max_chars - 1] + "…"


def _number(v: float) -> str:
    """A bar's value in at most 7 characters."""
    text = f"{v:.3g}"
    return text if len(text) <= 7 else f"{v:.0e}"


def bar_strips(vectors: Any, colours: Sequence[tuple[int, int, int]], size: tuple[int, int]) -> list[Any]:
    """(K, C) pooled vectors -> K tiles of each vector's largest-magnitude channels as labelled bars,
    on one scale for the K so bars compare down a column; negative values grow left of a middle axis."""
    v = np.nan_to_num(np.asarray(vectors, dtype=np.float64))
    k, c = v.shape
    w, h = size
    font = label_font()
    labelled = w >= 72 and h >= 40
    head = 13 if labelled else 0
    line = 12 if labelled else max(2, h // 8)
    count = max(1, min(c, MAX_BARS, (h - head) // line))
    line = max(line, min(2 * line, (h - head) // count))  # large tiles: thicker bars, same count
    top = top_channels(v, count)
    scale = float(np.abs(v).max()) or 1.0
    signed = bool((v < 0).any())
    name_w = 6 * len(f"c{c - 1}") + 4 if labelled else 0
    value_w = 44 if labelled else 0
    left, right = name_w + 2, max(name_w + 4, w - value_w - 2)
    zero = (left + right) // 2 if signed else left
    half = (right - left) / 2 if signed else right - left
    tiles = []
    for i in range(k):
        img = Image.new("RGB", (w, h), PANEL)
        draw = ImageDraw.Draw(img)
        if labelled:
            draw.text((2, 0), fit_text(f"top {len(top[i])} of {c} channels", w - 4, keep_end=False), fill=(90, 90, 90), font=font)
        draw.line([(zero, head), (zero, h)], fill=(190, 190, 190))
        for j, ch in enumerate(top[i]):
            y = head + j * line
            value = float(v[i, ch])
            end = zero + value / scale * half
            x0, x1 = sorted((zero, end))
            draw.rectangle([x0, y + 1, max(x0, x1), y + max(1, line - 2)], fill=colours[i])
            if labelled:
                mid = y + line // 2
                draw.text((2, mid), f"c{ch}", fill=(60, 60, 60), font=font, anchor="lm")
                draw.text((right + 3, mid), _number(value), fill=(60, 60, 60), font=font, anchor="lm")
        tiles.append(img)
    return tiles


def pca_scatter(vectors: Any, rows: Sequence[int], colours: Sequence[tuple[int, int, int]], size: tuple[int, int]) -> Any:
    """A panel of the K vectors' 2-D PCA (:func:`pca_2d`): one dot per image in its colour, labelled
    ``#row``; both axes on one scale (distances read true), the cross at the mean of the K."""
    xy, share = pca_2d(vectors)
    w, h = size
    img = Image.new("RGB", (w, h), PANEL)
    draw = ImageDraw.Draw(img)
    font = label_font()
    labelled = w >= 72 and h >= 60
    radius = 4 if labelled else max(1, min(w, h) // 24)
    top = 14 if labelled else radius + 1
    bottom = h - (14 if labelled else radius + 1)
    left, right = radius + 2, w - (radius + 2) - (22 if labelled else 0)  # room for the "#row" labels
    span = max(float(xy[:, 0].max() - xy[:, 0].min()), float(xy[:, 1].max() - xy[:, 1].min())) or 1.0
    unit = min(right - left, bottom - top) / span
    cx = (left + right) / 2 - unit * (xy[:, 0].max() + xy[:, 0].min()) / 2
    cy = (top + bottom) / 2 + unit * (xy[:, 1].max() + xy[:, 1].min()) / 2
    draw.line([(cx, top), (cx, bottom)], fill=(215, 215, 215))
    draw.line([(left, cy), (right, cy)], fill=(215, 215, 215))
    if labelled:
        draw.text((2, 0), f"PC2 {share[1]:.0%}", fill=(90, 90, 90), font=font)
        draw.text((w - 2, h - 1), f"PC1 {share[0]:.0%}", fill=(90, 90, 90), font=font, anchor="rd")
    for (x, y), row, colour in zip(xy, rows, colours, strict=True):
        px, py = cx + unit * x, cy - unit * y
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour, outline=(40, 40, 40))
        if labelled:
            draw.text((px + radius + 1, py - radius - 6), f"#{row}", fill=(40, 40, 40), font=font)
    return img
