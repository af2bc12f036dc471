"""Feature processors (``--process NAME[:ARG[:ARG]]``): small steps applied, in order, to each stored
layer's batch on the device, after pooling and before the storage dtype.

A processor is a class built from its ``ARG`` strings (``cls(*args)``) with ``output_shape(shape)``
and ``__call__(x)``, optionally ``prepare(input_size)``, ``cells(shape)`` and ``FILE_ARGS``: the
protocol for plug-ins is in docs/trust.md. Built in: ``l2norm``, ``resize`` and ``pca``; others
register under the ``featdump.processors`` entry-point group. Nothing here imports torch at module level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, UsageError
from featdump.text import first_line
from featdump.values import PIN

GROUP = "featdump.processors"


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``"pca:64:basis.npz"`` -> ``("pca", ["64", "basis.npz"])`` (at most two ARGs; a FILE may hold ``:``)."""
    name, _, rest = str(spec).strip().partition(":")
    if not name:
        raise UsageError(f"--process {spec!r}: give NAME[:ARG[:ARG]], e.g. l2norm or resize:stride=8")
    return name, rest.split(":", 1) if rest else []


class L2Norm:
    """``l2norm``: every channel vector (at each position, each token, or the pooled vector) scaled to unit length."""

    def __init__(self, *args: str) -> None:
        if args:
            raise UsageError("--process l2norm takes no arguments")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        dim = -1 if x.ndim == 3 else 1  # tokens (B, T, D): over D; maps (B, C, H, W) and vectors (B, C): over C
        return F.normalize(x, dim=dim, eps=1e-12)


class Resize:
    """``resize:HxW`` or ``resize:stride=S``: every spatial map resized bilinearly (align_corners=False)
    to one grid (``stride=S``: the input size divided by S). Token sequences and vectors pass unchanged."""

    def __init__(self, *args: str) -> None:
        self.size: tuple[int, int] | None = None
        self.stride: int | None = None
        arg = args[0] if len(args) == 1 else ""
        m = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", arg) or re.fullmatch(r"\s*(\d+)\s*", arg)
        s = re.fullmatch(r"\s*stride\s*=\s*(\d+)\s*", arg)
        if m:
            self.size = (int(m.group(1)), int(m.group(m.lastindex or 1)))
        elif s:
            self.stride = int(s.group(1))
        if (self.size is None and not self.stride) or (self.size is not None and min(self.size) < 1):
            raise UsageError(f"--process resize:{':'.join(args)}: give resize:HxW (e.g. resize:28x28) or resize:stride=S (e.g. resize:stride=8)")

    def prepare(self, input_size: tuple[int, int]) -> None:
        if self.stride:
            h, w = input_size
            self.size = (max(1, h // self.stride), max(1, w // self.stride))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != 3:
            return shape
        if self.size is None:
            raise UsageError("--process resize:stride=S needs the input size (prepare was not called)")
        return (shape[0], *self.size)

    def cells(self, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
        h, w = self.output_shape(shape)[1:]
        return (shape[1] / h, 0.0, shape[2] / w, 0.0)  # align_corners=False: input = output x scale

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        if x.ndim != 4:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class PCA:
    """``pca:K:FILE``: channels projected onto the first K principal components of a saved basis.

    FILE is a ``.npz`` (numpy) or ``.safetensors`` file holding ``mean`` (C,) and ``components``
    (K_max, C), rows the principal axes as sklearn's ``PCA.components_``: the output is
    ``(x - mean) @ components[:K].T`` along the channel axis (C of a map or a vector, D of tokens).
    """

    FILE_ARGS = (1,)

    def __init__(self, *args: str) -> None:
        if len(args) != 2 or not args[0].strip().isdigit() or int(args[0]) < 1:
            raise UsageError(f"--process pca:{':'.join(args)}: give pca:K:FILE, e.g. pca:64:basis.npz")
        import numpy as np

        k, path = int(args[0]), args[1]
        self.k, self.file = k, path
        p = Path(path)
        if not p.is_file():  # a FIFO is not opened (it would block)
            said = "is not a regular file (a folder, FIFO, socket or device)" if p.exists() else "not found"
            raise UsageError(f"--process pca: basis file {path} {said}")
        try:
            if p.suffix == ".safetensors":
                from safetensors.numpy import load_file

                data = load_file(str(p))
            else:
                with np.load(p, allow_pickle=False) as z:
                    data = {key: z[key] for key in z.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one usage error
            raise UsageError(f"--process pca: cannot read {path} as .npz or .safetensors ({type(exc).__name__})") from None
        if "mean" not in data or "components" not in data:
            raise UsageError(f"--process pca: {path} must hold 'mean' (C,) and 'components' (K, C); it holds {sorted(data)}")
        mean = np.asarray(data["mean"], dtype=np.float32).reshape(-1)
        comp = np.asarray(data["components"], dtype=np.float32)
        if comp.ndim != 2 or comp.shape[1] != mean.shape[0]:
            raise UsageError(f"--process pca: {path}: components must be (K, C) with C = len(mean) = {mean.shape[0]}, not {comp.shape}")
        if k > comp.shape[0]:
            raise UsageError(f"--process pca:{k}: {path} holds only {comp.shape[0]} components")
        self.mean, self.components = mean, np.ascontiguousarray(comp[:k])  # float32
        self._on: Any = None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c = self.mean.shape[0]
        axis = len(shape) - 1 if len(shape) == 2 else 0
        if shape[axis] != c:
            raise UsageError(
                f"--process pca:{self.k}:{self.file}: the basis has {c} channels, a layer has {shape[axis]}; "
                "store one layer per basis (--out-indices or --layers)"
            )
        out = list(shape)
        out[axis] = self.k
        return tuple(out)

    def __call__(self, x: Any) -> Any:
        import torch

        if self._on is None or self._on[0].device != x.device:
            self._on = (torch.from_numpy(self.mean).to(x.device), torch.from_numpy(self.components).to(x.device))
        mean, comp = self._on
        if x.ndim < 4:  # tokens (B, T, D) or vectors (B, C)
            return (x - mean) @ comp.T
        y = x.permute(0, 2, 3, 1) - mean  # (B, H, W, C)
        return (y @ comp.T).permute(0, 3, 1, 2)


BUILTIN: dict[str, type] = {"l2norm": L2Norm, "resize": Resize, "pca": PCA}


@dataclass(frozen=True)
class ProcessorInfo:
    """One installed processor, as ``featdump processors`` lists it."""

    name: str
    source: str  # "built in", or the distribution that registers it
    target: str  # module:Class
    doc: str


def installed() -> list[ProcessorInfo]:
    """Built-in processors, then those registered by installed packages."""
    out = [ProcessorInfo(n, "built in", f"{c.__module__}:{c.__name__}", _doc(c)) for n, c in BUILTIN.items()]
    for ep in entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        try:
            doc = _doc(ep.load())
        except Exception as exc:  # noqa: BLE001 - a plug-in that cannot load is listed, saying why
            doc = f"cannot be loaded: {first_line(exc)}"
        out.append(ProcessorInfo(ep.name, dist, ep.value, doc))
    return out


def _doc(cls: Any) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].replace("``", "").split())


def find(name: str) -> type:
    """The class of processor ``name``: built in, else from the entry-point group; a missing one is a
    usage error naming the package to install (``featdump-NAME`` unless it says otherwise)."""
    if name in BUILTIN:
        return BUILTIN[name]
    for ep in entry_points(group=GROUP, name=name):
        try:
            return ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is the user's to fix
            raise UsageError(f"--process {name}: cannot load {ep.value} ({type(exc).__name__}: {exc})") from None
    known = ", ".join(p.name for p in installed())
    raise UsageError(
        f"--process {name}: no such processor installed (installed: {known}); install the package that "
        f"provides it (e.g. pip install featdump-{name}), which registers it under the {GROUP!r} entry points"
    )


@dataclass(frozen=True)
class Step:
    """One ``--process`` value (without its pins) and the processor built from it."""

    spec: str
    run: Any
    files: tuple[str, ...] = ()  # the files it reads (its class's ``FILE_ARGS``), pinned by sha256


def load(specs: Sequence[str] | None) -> list[Step]:
    """The steps for ``--process`` values, in order (usage errors before any model loads). A value
    read back from a file carries the sha256 of each file its processor reads (:func:`recorded`):
    a file that is gone or has changed since is a UsageError."""
    from featdump.model.weights import sha256_file

    out = []
    for value in specs or ():
        spec, *pins = str(value).split(PIN)
        name, args = split_spec(spec)
        cls = find(name)
        files = tuple(args[i] for i in getattr(cls, "FILE_ARGS", ()) if i < len(args))
        for file, sha in zip(files, pins, strict=False):
            digest = sha256_file(file) if Path(file).is_file() else None
            if digest != sha:
                now = f"sha256 {digest[:12]}…, recorded {sha[:12]}…" if digest else "it is gone"
                raise UsageError(
                    f"--process {name}: {file} has changed since the file was made ({now}); "
                    "its rows cannot be reproduced without the original"
                )
        try:
            out.append(Step(spec, cls(*args), files))
        except Exception as exc:  # noqa: BLE001 - a plugin's own argument checks
            if isinstance(exc, UsageError):
                raise
            raise UsageError(f"--process {spec}: {type(exc).__name__}: {exc}") from None
    return out


def recorded(steps: Sequence[Step]) -> tuple[str, ...] | None:
    """The ``--process`` values as the file records them: each followed by `` sha256:HEX`` of every
    file its processor reads, so a changed file is a changed setting (``--resume``, ``merge``)."""
    from featdump.model.weights import sha256_file

    return tuple(s.spec + "".join(PIN + sha256_file(f) for f in s.files if Path(f).is_file()) for s in steps) or None


Grid = tuple[float, float, float, float]  # scale_y, offset_y, scale_x, offset_x


def stored_layers(described: Any, pool: str, steps: Sequence[Step], device: Any = None) -> list[Any]:
    """The layers of ``described`` (a backbone or a description) with the shapes the processors make
    (``LayerInfo.processed``) and, for maps, where their cells lie in model-input pixels (``pixel_grid``,
    ``[]`` and ``reduction`` 0: not spatial); processors that need it are told the model's input
    ``(H, W)`` first (``prepare``). With a ``device``, the processors first run once on zeros there, so
    a processor that returns another shape than it declares stops a run before anything is written."""
    hw = tuple(int(v) for v in described.data.input_size[-2:])
    for step in steps:
        if hasattr(step.run, "prepare"):
            step.run.prepare(hw)
    if not steps:
        return list(described.layers)
    out = []
    for layer in described.layers:
        shape = tuple(layer.stored_shape(pool))
        if device is not None:
            import torch

            apply(steps, torch.zeros((1, *shape), device=device), torch.float32)
        r = layer.reduction
        grid: Grid | None = (r, 0.0, r, 0.0) if len(shape) == 3 and r else None
        for step in steps:
            after = tuple(int(d) for d in step.run.output_shape(shape))
            grid = _compose(grid, _cells(step, shape, after))
            shape = after
        if len(shape) != 3:
            out.append(replace(layer, processed=shape))
            continue
        pixel_grid = [int(v) if float(v).is_integer() else round(v, 6) for v in grid] if grid else []
        attrs = {**layer.attrs, "pixel_grid": pixel_grid}
        out.append(replace(layer, processed=shape, reduction=pixel_grid[0] if grid else 0, attrs=attrs))
    return out


def _cells(step: Any, before: tuple[int, ...], after: tuple[int, ...]) -> Grid | None:
    """Where a step's output cells lie on its input map (None: not spatial, or not a map)."""
    if len(before) != 3 or len(after) != 3:
        return None
    if not hasattr(step.run, "cells"):
        return (1.0, 0.0, 1.0, 0.0) if before[1:] == after[1:] else None
    if (c := step.run.cells(before)) is None:
        return None
    try:
        grid = tuple(float(v) for v in c)
    except (TypeError, ValueError):
        grid = ()
    if len(grid) != 4 or not all(math.isfinite(v) for v in grid) or grid[0] <= 0 or grid[2] <= 0:
        raise FeatdumpError(
            f"--process {step.spec}: cells({before}) returned {c!r}, not (scale_y, offset_y, scale_x, offset_x) "
            "with finite values and scales above 0 (fix or remove the processor)"
        )
    return grid


def _compose(grid: Grid | None, cells: Grid | None) -> Grid | None:
    """Input cells in pixels (``grid``) then output cells in input cells -> output cells in pixels."""
    if grid is None or cells is None:
        return None
    return (cells[0] * grid[0], cells[1] * grid[0] + grid[1], cells[2] * grid[2], cells[3] * grid[2] + grid[3])


def apply(steps: Sequence[Step], x: Any, dtype: Any) -> Any:
    """One layer's stored batch through every processor (in float32), each result's shape checked
    against what the processor declared, then cast to the storage ``dtype``."""

    y = x.float()
    for step in steps:
        want = tuple(int(d) for d in step.run.output_shape(tuple(y.shape[1:])))
        y = step.run(y)
        got = tuple(getattr(y, "shape", ())[1:])
        if got != want:
            raise FeatdumpError(
                f"--process {step.spec}: the processor declared shape {want} per image but returned {got}; "
                "its output_shape and __call__ must agree (fix or remove the processor)"
            )
    return y.to(dtype=dtype).contiguous()  # as forward.to_storage: the cast, then NCHW
