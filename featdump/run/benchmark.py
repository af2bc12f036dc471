"""``featdump bench``: which of decoding, the forward pass, the writer or their overlap limits a run
on this machine, with these images, this model and these options. Returns data; the CLI renders it.

Four timings over the same first images (each stage bounded by a share of ``seconds``):

* **decode**: the run's loader alone (reading, decoding, timm's transform, batching);
* **forward**: the forward pass alone on one decoded batch, repeated (bare: no copy queue, no
  writer), at the run's batch size and at half and twice it, keeping the best;
* **write**: the writer alone (a Store in the output's folder, whole chunks, the run's
  compression and dtype) fed with that batch's outputs;
* **pipeline**: the three together, as ``extract`` runs them.

The limit is the slowest stage; a pipeline well below it means the stages do not overlap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.errors import UsageError
from featdump.options import ExtractConfig


@dataclass
class Stage:
    name: str  # decode | forward | write | pipeline
    images: int
    seconds: float
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BenchResult:
    model: str
    device: str
    batch_size: int
    workers: int
    write_threads: int
    mb_per_image: float
    stages: list[Stage] = field(default_factory=list)
    limit: str = ""
    advice: list[str] = field(default_factory=list)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


ADVICE = {
    "decode": [
        "more decoding workers: --workers N (up to the free cores)",
        "--decode gpu (JPEGs decoded on a CUDA GPU with nvjpeg)",
        "--fast-decode (JPEG DCT scaling before the resize; slightly different pixels)",
    ],
    "forward": [
        "--precision bf16 (or fp16) on a GPU",
        "a larger --batch-size on a GPU (the best one measured is shown)",
        "fewer levels (--out-indices): a model cut after its last stored level computes less",
    ],
    "write": [
        "--dtype float16 (half the bytes)",
        "fewer levels (--out-indices), or --pool avg",
        "--compression none when the CPU, not the disk, is the limit (zstd when the disk is)",
        "a faster disk for -o (local SSD or tmpfs, then copy)",
    ],
    "pipeline": [
        "the stages do not overlap: leave cores free for the writer and the decoders (fewer --workers "
        "or torch threads), and check that the disk is not shared with another heavy job",
    ],
}


MAX_SECONDS = 3600  # an hour: longer timings say nothing new
MAX_IMAGES = 100_000  # the images' references are held in memory


def run_benchmark(cfg: ExtractConfig, seconds: float = 60.0, images: int = 300) -> BenchResult:
    """Time the four stages for at most about ``seconds`` in all (plus loading the model)."""
    from featdump.data.batching import Loader
    from featdump.data.sources import open_source
    from featdump.environment import check_environment
    from featdump.model.backbone import backbone_for
    from featdump.run.device import check_decode, resolve_device, tune
    from featdump.run.forward import Forward
    from featdump.run.placement import placement_from_env
    from featdump.run.process import torch_settings, tune_malloc

    if not 0 < seconds <= MAX_SECONDS:  # false for nan too
        raise UsageError(f"--seconds takes a number of seconds above 0 and at most {MAX_SECONDS}, not {seconds}")
    if not 1 <= images <= MAX_IMAGES:
        raise UsageError(f"--images takes a whole number from 1 to {MAX_IMAGES:,}, not {images}")
    check_environment()
    placement = placement_from_env(shard=(0, 1))
    refs = list(itertools.islice(open_source(cfg.inputs, cfg).select(0, 1).stream(), images))
    if not refs:
        raise UsageError("bench: no images found in the INPUTs")
    if len(refs) < images:  # few images: go round them again, so that each stage runs long enough
        refs = (refs * -(-images // len(refs)))[:images]
    device = resolve_device(cfg.device, placement.local_rank)
    check_decode(cfg, device)
    tuning = tune(device, cfg, placement)
    tune_malloc()
    share = seconds / 4
    with torch_settings(device, tuning.threads):
        backbone = backbone_for(cfg)
        per_image = sum(layer.bytes_per_image(cfg.dtype, cfg.pool) for layer in backbone.layers)
        result = BenchResult(cfg.model, str(device), tuning.batch_size, tuning.workers, tuning.write_threads, per_image / 1e6)

        def loader(batch_size: int) -> Any:
            return Loader(refs, backbone, cfg, device, batch_size, tuning.workers, tuning.prefetch, tuning.decode_nice)

        # 1. decode alone
        first = None
        n, t0 = 0, time.perf_counter()
        for batch in loader(tuning.batch_size):
            n += len(batch.positions)
            if first is None and batch.pixels is not None:
                first = batch.pixels
            if time.perf_counter() - t0 > share:
                break
        result.stages.append(Stage("decode", n, time.perf_counter() - t0, f"{tuning.workers} worker(s)"))
        if first is None:
            raise UsageError("bench: none of the first images could be decoded")

        # 2. forward alone, bare, best of three batch sizes
        forward = Forward(backbone, device, cfg.precision, cfg.pool, cfg.dtype, tuning.channels_last, cfg.compile)
        best: Stage | None = None
        outputs: list[Any] = []
        for bs in sorted({max(1, tuning.batch_size // 2), tuning.batch_size, tuning.batch_size * 2}):
            reps = -(-bs // len(first))
            import torch

            pixels = torch.cat([first] * reps)[:bs]
            out = _resolve(forward(pixels))  # warm-up
            k, t0 = 0, time.perf_counter()
            while True:
                out = _resolve(forward(pixels))
                k += bs
                if time.perf_counter() - t0 > share / 3:
                    break
            stage = Stage("forward", k, time.perf_counter() - t0, f"batch {bs}")
            if best is None or stage.rate > best.rate:
                best, outputs = stage, out
        assert best is not None
        result.stages.append(best)

        # 3. the writer alone, in the output's folder
        folder = Path(cfg.output).resolve().parent if cfg.output else Path.cwd()
        result.stages.append(_time_writer(folder, backbone.layers, outputs, cfg, tuning.write_threads, share))

        # 4. the pipeline: loader -> forward -> writer, as extract runs it
        result.stages.append(_time_pipeline(folder, backbone, cfg, forward, loader(tuning.batch_size), tuning, share))

    stages = [s for s in result.stages if s.name != "pipeline"]
    slowest = min(stages, key=lambda s: s.rate)
    pipe = result.stage("pipeline")
    result.limit = slowest.name
    if pipe is not None and pipe.rate < 0.7 * slowest.rate:
        result.limit = "pipeline"
    result.advice = list(ADVICE[result.limit])
    return result


def _resolve(out: Any) -> list[Any]:
    from featdump.run.copies import resolve

    return resolve(out)


@contextlib.contextmanager
def _scratch_store(folder: Path, layers: Any, cfg: ExtractConfig) -> Iterator[Any]:
    """A throwaway output store in ``folder`` (hidden name), removed with its journal afterwards."""
    from featdump.store.locks import journal_path
    from featdump.store.sink import Store

    fd, name = tempfile.mkstemp(prefix=".featdump-bench-", suffix=".h5", dir=folder)
    os.close(fd)
    os.unlink(name)
    path = Path(name)
    store = Store.create(path, {"format": "featdump"}, layers, pool=cfg.pool, dtype=cfg.dtype, compression=cfg.compression)
    try:
        yield store
    finally:
        store.close()
        for p in (path, journal_path(path)):
            p.unlink(missing_ok=True)


def _time_writer(folder: Path, layers: Any, outputs: list[Any], cfg: ExtractConfig, threads: int, budget: float) -> Stage:
    b = len(outputs[0])
    with _scratch_store(folder, layers, cfg) as store:
        store.write_threads = threads
        n, t0 = 0, time.perf_counter()
        while True:
            store.append(outputs, [f"{n + i}" for i in range(b)], [], n + b)
            n += b
            if time.perf_counter() - t0 > budget:
                break
        store.finish()
        store.close()
        seconds = time.perf_counter() - t0
    return Stage("write", n, seconds, f"{cfg.compression}, {cfg.dtype}, {threads} thread(s), {n * sum(a[0].nbytes for a in outputs) / seconds / (1 << 20):.0f} MiB/s")


def _time_pipeline(folder: Path, backbone: Any, cfg: ExtractConfig, forward: Any, loader: Any, tuning: Any, budget: float) -> Stage:
    from featdump.run.writer import Writer

    with _scratch_store(folder, backbone.layers, cfg) as store:
        n, t0 = 0, time.perf_counter()
        writer = Writer(store, tuning.queue_bytes, tuning.write_threads)
        try:
            for batch in loader:
                feats = forward(batch.pixels) if batch.pixels is not None else []
                k = len(batch.positions)
                writer.put((feats, [f"{n + i}" for i in range(k)], [], n + k))
                n += k
                if time.perf_counter() - t0 > budget:
                    break
        finally:
            writer.close()
        store.finish()
        store.close()
        seconds = time.perf_counter() - t0
    return Stage("pipeline", n, seconds, "decode + forward + write")


def bench_config(cfg: ExtractConfig) -> ExtractConfig:
    """The run's options without what only a real output needs."""
    return dataclasses.replace(cfg, resume=False, overwrite=False)
