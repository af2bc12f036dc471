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


# Reading lives in the store package; ``featdump.api.open`` / ``.FeatureFile`` stay importable here.
from featdump.store.reader import FeatureFile, open  # noqa: E402, A004
