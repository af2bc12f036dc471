"""What a run returns (:class:`Summary`) and what it tells a progress display (:class:`ProgressSink`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError
from featdump.model.layers import Backbone
from featdump.run.placement import Placement
from featdump.text import printable, to_str


@dataclass
class LayerSummary:
    name: str
    module: str
    index: int
    reduction: int | float
    shape: tuple[int | str, ...]  # (C, "h", "w") for a ragged layer
    dtype: str
    stored_bytes: int
    raw_bytes: int
    nonfinite: int = 0  # NaN/inf values among the features this run wrote (non-zero: check the weights)


@dataclass
class Summary:
    output: str
    model: str
    weights: str
    device: str
    num_images: int
    num_failed: int
    num_inputs: int
    shard: tuple[int, int]
    layers: list[LayerSummary]
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    images_this_run: int = 0
    resumed_from: int = 0
    complete: bool = True
    bytes_written: int = 0  # feature bytes (uncompressed) this run
    threads: int = 0  # torch intra-op threads the forward pass ran with
    workers: int = 0  # decoding threads (CPU) or DataLoader processes (GPU)

    @property
    def images_per_second(self) -> float:
        return self.images_this_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        """Feature data written per second of the run (uncompressed MiB/s)."""
        return self.bytes_written / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


def end_of_run(summary: Summary, strict: bool, flag: str = "--strict") -> None:
    """What ends a written run in an error, for the CLI and the API alike (docs/safety.md): no input
    could be read (the first error said); with ``strict`` (named ``flag``), any failed image or any
    layer holding NaN/inf values."""
    if not summary.num_images and summary.num_failed:
        first = f"; first: {summary.failures[0][0]}: {summary.failures[0][1]}" if summary.failures else ""
        raise FeatdumpError(
            f"no image could be read: all {summary.num_failed} input(s) failed{first}; the file {summary.output} lists them under /failed"
        )
    bad = [layer for layer in summary.layers if layer.nonfinite]
    if strict and summary.num_failed:
        raise FeatdumpError(f"{summary.num_failed} image(s) failed ({flag}); see /failed in {summary.output}")
    if strict and bad:
        raise FeatdumpError(f"{len(bad)} layer(s) hold NaN/inf values ({flag}), e.g. {nonfinite_line(bad[0])}; see {summary.output}")


def nonfinite_line(layer: LayerSummary) -> str:
    """One layer's NaN/inf count, as the warning (or the strict error) says it."""
    return (
        f"layer {printable(layer.name)}: {layer.nonfinite} non-finite value(s) (NaN/inf) in the features "
        "written by this run; check the weights (a checkpoint holding NaN gives all-NaN features)"
        + ("; or --dtype float32: float16 holds nothing past ±65504, larger values are stored as inf" if layer.dtype == "float16" else "")
    )


class ProgressSink:
    """What the job tells a progress display; the default shows nothing."""

    def start(self, total: int | None, done: int, description: str) -> None: ...

    def advance(self, images: int) -> None: ...

    def stop(self) -> None: ...


def summarize(
    store: Any,
    out_path: Path,
    backbone: Backbone,
    device: str,
    placement: Placement,
    num_inputs: int,
    seconds: float,
    resumed_from: int,
) -> Summary:
    """The :class:`Summary` of a store (open, written by this run from ``resumed_from`` on)."""
    h5 = store.h5
    layers = []
    for layer in backbone.layers:
        ds = h5["features"][layer.name]
        stored, raw = int(ds.id.get_storage_size()), int(ds.dtype.itemsize) * int(ds.size)
        shape = (ds.shape[1], "h", "w") if "cells" in h5 and layer.name in h5["cells"] else tuple(ds.shape[1:])  # ragged: rows at their own grid
        layers.append(LayerSummary(layer.name, layer.module, layer.index, layer.reduction, shape, str(ds.dtype), stored, raw))
    fp, fe = h5["failed"]["paths"], h5["failed"]["errors"]
    failures = [(to_str(fp[i]), to_str(fe[i])) for i in range(min(len(fp), 20))]
    return Summary(
        output=str(out_path),
        model=backbone.name,
        weights=backbone.weights,
        device=device,
        num_images=store.progress.num_images,
        num_failed=store.progress.num_failed,
        num_inputs=num_inputs,
        shard=placement.shard,
        layers=layers,
        failures=failures,
        seconds=seconds,
        images_this_run=store.progress.inputs_done - resumed_from,
        resumed_from=resumed_from,
        complete=bool(h5.attrs.get("complete", False)),
        bytes_written=int(getattr(store, "bytes_written", 0)),
    )

