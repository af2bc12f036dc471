"""The Python API: ``featdump.extract(...)`` runs a job, ``featdump.open(path)`` reads a file.

Example::

    import featdump

    summary = featdump.extract("resnet50", ["photos/"], "feats.h5", out_indices=[1, 2, 3], dtype="float16")
    with featdump.open("feats.h5") as f:
        f.layers                      # ['layer2', 'layer3', 'layer4']
        f["layer3"]                   # lazy h5py.Dataset, (N, 1024, 14, 14)
        f.numpy("layer3", [0, 5])     # numpy array of rows 0 and 5
        f.numpy("layer3", f.row("cats/tom.jpg"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featdump.errors import FeatdumpError

if TYPE_CHECKING:
    import h5py
    import numpy as np

    from featdump.run.results import ProgressSink, Summary

__all__ = ["FeatureFile", "extract", "open"]


def extract(
    model: str,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    out_indices: Sequence[int] | str | None = None,
    layers: Sequence[str] | str | None = None,
    tokens: str | None = None,
    output_stride: int | None = None,
    img_size: int | str | tuple[int, int] | None = None,
    pretrained: bool | None = None,
    checkpoint: str | Path | None = None,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    dtype: str | None = None,
    pool: str | None = None,
    compression: str | None = None,
    fast_decode: bool | None = None,
    decode: str | None = None,
    compile: bool | None = None,  # noqa: A002 - the option's name
    max_image_pixels: int | None = None,
    shard: str | tuple[int, int] | None = None,
    resume: bool | None = None,
    overwrite: bool | None = None,
    strict: bool | None = None,
    config: str | Path | None = None,
    progress: ProgressSink | None = None,
) -> Summary:
    """Run the same job as ``featdump extract`` and return its :class:`~featdump.run.job.Summary`.

    Keyword arguments are the command's options (``None`` = not given: the ``config`` file's value,
    else the default). Raises :class:`~featdump.errors.UsageError` for bad options and
    :class:`~featdump.errors.FeatdumpError` for runtime failures; prints nothing. With
    ``strict=True`` a run in which any image failed raises after writing the file. Like the
    command, it sets torch's thread count and glibc's malloc settings in this process
    (featdump/alloc.py; ``FEATDUMP_MALLOC_TUNING=0`` leaves the allocator alone).
    """
    from featdump import options as cfgmod
    from featdump.run.job import run_extraction

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    options: dict[str, Any] = {
        "out_indices": list(out_indices) if isinstance(out_indices, (list, tuple)) else out_indices,
        "layers": list(layers) if isinstance(layers, (list, tuple)) else layers,
        "tokens": tokens,
        "output_stride": output_stride,
        "img_size": img_size,
        "pretrained": pretrained,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "workers": workers,
        "dtype": dtype,
        "pool": pool,
        "compression": compression,
        "fast_decode": fast_decode,
        "decode": decode,
        "compile": compile,
        "max_image_pixels": max_image_pixels,
        "shard": shard,
        "resume": resume,
        "overwrite": overwrite,
        "strict": strict,
        "quiet": True,
    }
    given = {k: v for k, v in options.items() if v is not None}
    given.update(model=model, inputs=tuple(str(i) for i in inputs), output=str(output))
    file_values = cfgmod.load_toml(config) if config else {}
    args = ", ".join(f"{k}={v!r}" for k, v in given.items() if k not in ("model", "inputs", "output", "quiet"))
    cfg = cfgmod.resolve(
        given, file_values, command=f"featdump.extract({model!r}, {list(given['inputs'])!r}, {str(output)!r}, {args})"
    )
    summary = run_extraction(cfg, progress)
    if cfg.strict and summary.num_failed:
        raise FeatdumpError(f"{summary.num_failed} image(s) failed (strict=True); see /failed in {summary.output}")
    return summary


class FeatureFile:
    """A featdump file opened for reading. Use as a context manager, or call :meth:`close`.

    Only committed rows (below ``meta["num_images"]``) are exposed, so a partial file reads the same
    way as a finished one.
    """

    def __init__(self, path: str | Path) -> None:
        from featdump.store.read import check_virtual, open_featdump
        from featdump.store.sink import read_attr

        self.path = Path(path)
        self._missing = check_virtual(self.path)  # before our own handle: HDF5 allows one kind of open
        self._h5 = open_featdump(self.path)
        self.meta: dict[str, Any] = {k: read_attr(v) for k, v in self._h5.attrs.items()}
        n = int(self.meta.get("num_images", 0))
        raw = self._h5["paths"][:n] if "paths" in self._h5 else []
        self.paths: list[str] = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in raw]
        self.num_images = len(self.paths)
        self.layers: list[str] = list(self._h5["features"].keys()) if "features" in self._h5 else []
        self._rows = {p: i for i, p in enumerate(self.paths)}

    # ------------------------------------------------------------------ access

    def __getitem__(self, layer: str) -> h5py.Dataset:
        """The lazy h5py dataset of a layer (rows past ``num_images`` are not committed)."""
        if layer not in self.layers:
            raise KeyError(f"{layer!r} is not stored in {self.path}; layers: {', '.join(self.layers)}")
        return self._h5["features"][layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def __len__(self) -> int:
        return self.num_images

    def attrs(self, layer: str) -> dict[str, Any]:
        """A layer's attributes (module, index, channels, reduction, layout, …)."""
        from featdump.store.sink import read_attr

        return {k: read_attr(v) for k, v in self[layer].attrs.items()}

    def row(self, path: str) -> int:
        """The row of a stored image path (as in :attr:`paths`)."""
        try:
            return self._rows[path]
        except KeyError:
            raise KeyError(f"{path!r} is not a stored path in {self.path} (see .paths)") from None

    def numpy(self, layer: str, rows: int | slice | Sequence[int] | None = None) -> np.ndarray:
        """Rows of a layer as a numpy array: all committed rows, one row (``int``: no leading axis),
        a slice, or a list of rows in any order (duplicates allowed)."""
        import numpy as np

        if self._missing and self[layer].is_virtual:
            raise FeatdumpError(
                f"{self.path}: virtual source file(s) missing ({', '.join(self._missing[:3])}); "
                "their rows would read as zeros"
            )
        ds = self[layer]
        n = self.num_images
        if rows is None:
            return ds[:n]
        if isinstance(rows, (int, np.integer)):
            r = int(rows)
            if not -n <= r < n:
                raise IndexError(f"row {r} out of range: {self.path} has {n} rows")
            return ds[r % n]
        if isinstance(rows, slice):
            span = range(n)[rows]
            if span.step == 1:
                return ds[span.start : max(span.start, span.stop)]
            rows = list(span)
        idx = [int(i) for i in rows]
        bad = [r for r in idx if not -n <= r < n]
        if bad:
            raise IndexError(f"rows {bad[:5]} out of range: {self.path} has {n} rows")
        idx = [r % n for r in idx]
        if not idx:
            return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
        unique = sorted(set(idx))
        block = ds[unique]  # h5py wants increasing indices
        pos = {r: i for i, r in enumerate(unique)}
        return block[[pos[r] for r in idx]]

    @property
    def failed(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the images that could not be read."""
        if "failed" not in self._h5:
            return []
        m = int(self.meta.get("num_failed", self._h5["failed/paths"].shape[0]))
        dec = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
        return [(dec(p), dec(e)) for p, e in zip(self._h5["failed/paths"][:m], self._h5["failed/errors"][:m])]

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    @property
    def h5(self) -> h5py.File:
        """The underlying open h5py.File (read-only)."""
        return self._h5

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        model = self.meta.get("model")
        return f"<featdump file {str(self.path)!r}: {model}, {self.num_images} images, {state}, layers {self.layers}>"


def open(path: str | Path) -> FeatureFile:  # noqa: A001 - featdump.open mirrors h5py.File / builtins.open
    """Open a featdump file for reading: ``.paths``, ``.layers``, ``.meta``, ``[layer]``, ``.row()``, ``.numpy()``."""
    return FeatureFile(path)
