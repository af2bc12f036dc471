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

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from featdump.errors import FeatdumpError
from featdump.options import OPTIONS, Option

if TYPE_CHECKING:
    import h5py
    import numpy as np

    from featdump.run.job import ProgressSink, Summary

__all__ = ["FeatureFile", "extract", "open"]


def api_signature(table: Sequence[Option] = OPTIONS) -> inspect.Signature:
    """``featdump.extract``'s parameters, derived from the option table (featdump/options.py): the
    required options (``model``, ``inputs``, ``output``) positional, every other option a keyword
    (``None``: not given), then ``config`` and ``progress``."""
    P = inspect.Parameter
    params = [
        P(o.name, P.POSITIONAL_OR_KEYWORD if o.required else P.KEYWORD_ONLY, annotation=o.api_type,
          default=P.empty if o.required else None)
        for o in table
    ]  # fmt: skip
    params.sort(key=lambda p: p.kind)  # positional first; the sort is stable
    params.append(P("config", P.KEYWORD_ONLY, annotation=str | Path | None, default=None))
    params.append(P("progress", P.KEYWORD_ONLY, annotation="bool | ProgressSink | None", default=None))
    return inspect.Signature(params, return_annotation="Summary")  # run.job loads torch: named, not imported


def _recorded(option: Option, value: Any) -> Any:
    """An API value as the job takes it and as the file's ``command`` attribute records it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)) and get_args(option.type)[-1:] == (Ellipsis,):
        return list(value)
    return value


def extract(
    model: str,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    config: str | Path | None = None,
    progress: bool | ProgressSink | None = None,
    **options: Any,
) -> Summary:
    """Run the same job as ``featdump extract`` and return its :class:`~featdump.run.job.Summary`.

    Keyword arguments are the command's options, by name (``out_indices=[1, 2]``, ``dtype="float16"``,
    ``quiet=True``; ``None`` = not given: the ``config`` file's value, else the default). ``progress``:
    ``None`` shows a one-line progress display on stderr when stderr is a terminal and ``quiet`` is not
    set, ``True`` always, ``False`` never; or pass an object with ``start``/``advance``/``stop``.
    Raises :class:`~featdump.errors.UsageError` for bad options (``TypeError`` for an unknown keyword)
    and :class:`~featdump.errors.FeatdumpError` for runtime failures; prints nothing but that display. With
    ``strict=True`` a run in which any image failed raises after writing the file. Like the
    command, it sets torch's thread count and glibc's malloc settings in this process
    (featdump/run/alloc.py; ``FEATDUMP_MALLOC_TUNING=0`` leaves the allocator alone).
    """
    from featdump import options as cfgmod
    from featdump.run.job import run_extraction

    try:
        extract.__signature__.bind(model, inputs, output, **options)  # type: ignore[attr-defined]
    except TypeError as exc:  # an unknown keyword: Python's own words
        raise TypeError(f"extract() {exc}") from None
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    table = {o.name: o for o in OPTIONS}
    given = {k: _recorded(table[k], v) for k, v in options.items() if v is not None}
    args = ", ".join(f"{k}={v!r}" for k, v in given.items())
    given.update(model=model, inputs=tuple(str(i) for i in inputs), output=str(output))
    file_values = cfgmod.load_toml(config) if config else {}
    cfg = cfgmod.resolve(
        given, file_values, command=f"featdump.extract({model!r}, {list(given['inputs'])!r}, {str(output)!r}, {args})"
    )
    summary = run_extraction(cfg, _progress_sink(progress, cfg.quiet))
    if cfg.strict and summary.num_failed:
        raise FeatdumpError(f"{summary.num_failed} image(s) failed (strict=True); see /failed in {summary.output}")
    return summary


extract.__signature__ = api_signature()  # type: ignore[attr-defined]


def _progress_sink(progress: bool | ProgressSink | None, quiet: bool) -> ProgressSink | None:
    if progress is None:
        progress = not quiet and sys.stderr.isatty()
    if progress is True:
        from featdump.progress import TextProgress

        return TextProgress(sys.stderr)  # type: ignore[return-value]  # the same protocol
    return progress or None


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
