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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from featdump.errors import FeatdumpWarning
from featdump.options import OPTIONS, Option
from featdump.progress import TextProgress

if TYPE_CHECKING:
    from featdump.run.results import ProgressSink, Summary

__all__ = ["extract"]


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
    """Run the same job as ``featdump extract`` and return its :class:`~featdump.run.results.Summary`.

    Keyword arguments are the command's options, by name (``out_indices=[1, 2]``, ``dtype="float16"``,
    ``quiet=True``; ``None`` = not given: the ``config`` file's value, else the default). ``progress``:
    ``None`` shows a one-line progress display on stderr when stderr is a terminal and ``quiet`` is not
    set, ``True`` always, ``False`` never; or pass an object with ``start``/``advance``/``stop``.
    With ``ray=`` ("local", "auto" or an address) and ``shards=N`` the shards run as tasks on a Ray
    cluster and are merged at ``output``: it returns the merge's :class:`~featdump.store.merge.MergeSummary`
    (docs/cluster.md). Raises :class:`~featdump.errors.UsageError` for bad options (``TypeError`` for an unknown keyword)
    and :class:`~featdump.errors.FeatdumpError` for runtime failures; prints nothing but that display. With
    ``strict=True`` a run in which any image failed raises after writing the file; a run in which every
input failed raises FeatdumpError ("no image could be read") after writing it. Like the
    command, it changes process-wide settings (featdump/run/process.py): torch's thread count and,
    on CUDA, cuDNN's autotuner for the run (both restored afterwards); glibc's malloc settings for the
    rest of the process (``FEATDUMP_MALLOC_TUNING=0`` leaves the allocator alone); and, when torch is
    not imported yet and no policy is set, ``OMP_WAIT_POLICY=PASSIVE`` in ``os.environ`` (torch
    imported first: a :class:`~featdump.errors.FeatdumpWarning` says how to set it). SIGINT/SIGTERM
    handlers are the run's while it lasts: the first stops after the current batch (raising
    :class:`~featdump.errors.Interrupted`), a second raises ``KeyboardInterrupt``; the file keeps its
    last commit either way and ``resume=True`` finishes it. The global random state is left as it was.
    """
    from featdump.run.process import passive_omp

    if advice := passive_omp():  # before anything imports torch
        warnings.warn(advice, FeatdumpWarning, stacklevel=2)

    from featdump import configure as cfgmod
    from featdump.run.job import run_extraction
    from featdump.run.results import end_of_run
    from featdump.store.like import resolve_with_like

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
    command = f"featdump.extract({model!r}, {list(given['inputs'])!r}, {str(output)!r}, {args})"
    cfg = resolve_with_like(given, file_values, command)
    if cfg.ray:  # the shards on a Ray cluster, merged at output: the merge's summary
        from featdump.run.onray import run_on_ray

        return run_on_ray(cfg, _progress_sink(progress, cfg.quiet))  # type: ignore[return-value]
    summary = run_extraction(cfg, _progress_sink(progress, cfg.quiet))
    end_of_run(summary, cfg.strict, "strict=True")
    return summary


extract.__signature__ = api_signature()  # type: ignore[attr-defined]


def _progress_sink(progress: bool | ProgressSink | None, quiet: bool) -> ProgressSink | None:
    if progress is None:
        progress = not quiet and sys.stderr.isatty()
    if progress is True:
        return TextProgress(sys.stderr)  # type: ignore[return-value]  # the same protocol
    return progress or None
