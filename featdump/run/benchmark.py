"""``featdump bench``: which of decoding, the forward pass, the writer or their overlap limits a run
on this machine, with these images, this model and these options. Returns data; the CLI renders it.

Four timings over the same first images, each bounded by a share of ``seconds``: decode, forward
(bare, on one decoded batch), write (fed with that batch's outputs) and the pipeline of the three.
The limit is the slowest stage; a pipeline well below it means the stages do not overlap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump.data.batching import Rows
from featdump.errors import OutOfSpace, UsageError
from featdump.options import ExtractConfig
from featdump.values import size_mode_text


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
    batch_size: int  # the run's, used by every row (other sizes: forward_rates)
    workers: int
    write_threads: int
    bytes_per_image: int  # as stored: --dtype, --pool and --process applied
    stages: list[Stage] = field(default_factory=list)
    forward_rates: dict[int, float] = field(default_factory=dict)  # batch size -> img/s of the bare forward pass
    megapixels: float = 0.0  # the decoded images' mean size
    jpeg: bool = True  # any JPEG among the inputs (what --fast-decode and --decode gpu work on)
    limit: str = ""
    advice: list[str] = field(default_factory=list)
    note: str = ""  # what the rows alone would not say


MAX_SECONDS = 3600  # an hour: longer timings say nothing new
MAX_IMAGES = 100_000  # the images' references are held in memory
LARGE_MP = 2.0  # mean MP from which decoding + resizing (~18 CPU-ms/MP, bench/photos.py) outweighs small models
SMALL_MODELS = ("tf_efficientnet_lite0", "convnext_atto", "resnet18")  # fewest GMACs first (0.4, 0.55, 1.8 at 224)


def run_benchmark(cfg: ExtractConfig, seconds: float = 60.0, images: int = 300) -> BenchResult:
    """Time the four stages for at most about ``seconds`` in all (plus loading the model)."""
    from featdump.data.batching import Loader
    from featdump.data.sources import open_source
    from featdump.environment import check_environment
    from featdump.model.backbone import backbone_for
    from featdump.run import processors
    from featdump.run.device import check_decode, resolve_device, tune
    from featdump.run.forward import Forward
    from featdump.run.placement import placement_from_env
    from featdump.run.process import torch_settings, tune_malloc

    if not 0 < seconds <= MAX_SECONDS:  # false for nan too
        raise UsageError(f"--seconds takes a number of seconds above 0 and at most {MAX_SECONDS}, not {seconds}")
    if not 1 <= images <= MAX_IMAGES:
        raise UsageError(f"--images takes a whole number from 1 to {MAX_IMAGES:,}, not {images}")
    if size_mode_text(cfg.img_size):
        raise UsageError("bench times batches of one shape: give a fixed --img-size (e.g. 512), not a size mode")
    check_environment()
    cfg = dataclasses.replace(cfg, resume=False, overwrite=False)  # what only a real output needs
    procs = processors.load(cfg.process)
    placement = placement_from_env(shard=(0, 1))
    refs = list(itertools.islice(open_source(cfg.inputs, cfg).select(0, 1).stream(), images))
    if not refs:
        raise UsageError("bench: no images found in the INPUTs")
    device = resolve_device(cfg.device, placement.local_rank)
    check_decode(cfg, device)
    tuning = tune(device, cfg, placement)
    tune_malloc()
    share = seconds / 4
    with torch_settings(device, tuning.threads):
        backbone = backbone_for(cfg)
        tuning = tune(device, cfg, placement, backbone=backbone)  # the CPU batch follows the weights' size
        want = max(images, 3 * tuning.batch_size)  # the timings start after a first batch
        if len(refs) < want:  # few images: go round them again, so that each stage runs long enough
            refs = (refs * -(-want // len(refs)))[:want]
        backbone.layers = processors.stored_layers(backbone, cfg.pool, procs)
        per_image = sum(layer.bytes_per_image(cfg.dtype, cfg.pool) for layer in backbone.layers)
        result = BenchResult(cfg.model, str(device), tuning.batch_size, tuning.workers, tuning.write_threads, per_image)
        result.jpeg = any(Path(r.path).suffix.lower() in (".jpg", ".jpeg") for r in refs)

        def loader() -> Any:
            return Loader(refs, backbone, cfg, device, tuning.batch_size, tuning.workers, tuning.prefetch, tuning.decode_nice)

        # 1. decode alone (timed as the pipeline is: from the first batch on)
        first, sizes = None, []
        for batch, _ in _steady(loader(), share):
            first = batch.pixels if first is None and batch.pixels is not None else first
            sizes += [h * w for h, w in batch.geometry[:, :2] if not math.isnan(h)]  # orig_h, orig_w (NaN: unknown)
        result.stages.append(_stage("decode", f"{tuning.workers} worker(s)"))
        if first is None:
            raise UsageError("bench: none of the first images could be decoded")
        result.megapixels = sum(sizes) / 1e6 / max(1, len(sizes))

        # 2. forward alone, bare, at the run's batch size (the row) and at half and twice it (the advice)
        forward = Forward(backbone, device, cfg.precision, cfg.pool, cfg.dtype, tuning.channels_last, cfg.compile, procs)
        outputs: list[Any] = []
        for bs in (tuning.batch_size, max(1, tuning.batch_size // 2), tuning.batch_size * 2):
            stage, out = _time_forward(forward, first, bs, share / 3)
            result.forward_rates.setdefault(bs, stage.rate)
            if bs == tuning.batch_size:
                result.stages.append(stage)
                outputs = out

        # 3. the writer alone, in the output's folder
        folder = Path(cfg.output).resolve().parent if cfg.output else Path.cwd()
        try:
            result.stages.append(_time_writer(folder, backbone.layers, outputs, cfg, tuning.write_threads, share))
            # 4. the pipeline: loader -> forward -> writer, as extract runs it
            result.stages.append(_time_pipeline(folder, backbone, cfg, forward, loader(), tuning, share))
        except OutOfSpace:
            raise OutOfSpace(
                f"out of disk space in {folder} (bench writes temporary files there and removes them); "
                "free some space or give -o a folder with room"
            ) from None
    advise(result, cfg, device.type)
    return result


def advise(result: BenchResult, cfg: ExtractConfig, device: str) -> None:
    """The limit (the slowest stage, or the pipeline when the stages do not overlap) and what can
    help with it on this device and these inputs."""
    stages = [s for s in result.stages if s.name != "pipeline"]
    slowest = min(stages, key=lambda s: s.rate)
    pipe = next((s for s in result.stages if s.name == "pipeline"), None)
    result.limit = slowest.name
    if pipe is not None and pipe.rate < 0.7 * slowest.rate:
        result.limit = "pipeline"
    if pipe is not None and pipe.rate > slowest.rate:
        result.note = (
            f"the pipeline ran {pipe.rate / slowest.rate:.2f}x as fast as {slowest.name} alone, which it cannot "
            "do for long: the timings are noisy (other jobs, or few images); rerun with more --seconds and --images"
        )
    gpu = device == "cuda"
    best = max(result.forward_rates, key=lambda b: result.forward_rates[b])
    faster = result.forward_rates[best] / result.forward_rates[result.batch_size]
    name = cfg.model.split(".")[0]  # resnet18.a1_in1k: resnet18
    smaller = SMALL_MODELS[: SMALL_MODELS.index(name)] if name in SMALL_MODELS else SMALL_MODELS
    tips = {
        "decode": [
            f"resize the images first: they average {result.megapixels:.1f} MP, and decoding and resizing them "
            "costs more than the model's forward pass" if result.megapixels >= LARGE_MP else "",
            f"more decoding workers: --workers N (up to the free cores; now {result.workers})" if gpu else "",
            "--fast-decode (JPEG DCT scaling before the resize; slightly different pixels)" if result.jpeg else "",
            "--decode gpu (JPEGs decoded on the GPU with nvjpeg)" if gpu and result.jpeg else "",
            "a GPU takes the forward pass off these cores, leaving them to decoding" if not gpu else "",
        ],
        "forward": [
            f"--batch-size {best} ({faster:.2f}x the forward rate of batch {result.batch_size} here)" if faster > 1.05 else "",
            "--precision bf16 (or fp16)" if gpu else "",
            "a smaller --img-size: the forward pass costs about in proportion to the pixels" if not gpu else "",
            "--compile (torch.compile: slower first batches, then often faster)" if not cfg.compile else "",
            f"a smaller model (e.g. {', '.join(smaller)})" if smaller and not gpu else "",
            "fewer levels (--out-indices): a model cut after its last stored level computes less",
        ],
        "write": [
            "--dtype float16 (half the bytes)" if cfg.dtype != "float16" else "",
            "fewer levels (--out-indices)" + (", or --pool avg" if cfg.pool == "none" else ""),
            "--compression none when the CPU, not the disk, is the limit (zstd when the disk is)",
            "a faster disk for -o (local SSD or tmpfs, then copy)",
        ],
        "pipeline": [
            "the stages do not overlap: leave cores free for the writer and the decoders (fewer --workers "
            "or torch threads), and check that the disk is not shared with another heavy job",
        ],
    }
    extra = tips[slowest.name] if result.limit == "pipeline" else []  # what helps once the stages overlap
    result.advice = [t for t in tips[result.limit] + extra if t]


class _Steady:
    """Iterate ``loader`` for about ``budget`` seconds, timed from the first batch on (start-up
    left out); ``count`` and ``seconds``: the images and time after the first batch."""

    count, seconds, t0 = 0, 0.0, 0.0

    def __call__(self, loader: Any, budget: float) -> Iterator[tuple[Any, int]]:
        self.count, self.seconds = 0, 0.0
        for i, batch in enumerate(loader):
            k = len(batch.positions)
            if i == 0:
                self.t0 = time.perf_counter()
            else:
                self.count += k
                self.seconds = time.perf_counter() - self.t0
            yield batch, k
            if self.count and time.perf_counter() - self.t0 > budget:
                break

    def finished(self) -> None:
        """The timed work ends now (the pipeline: once the writer has written every batch)."""
        self.seconds = time.perf_counter() - self.t0


_steady = _Steady()


def _stage(name: str, detail: str) -> Stage:
    return Stage(name, _steady.count, _steady.seconds, detail)


def _time_forward(forward: Any, first: Any, bs: int, budget: float) -> tuple[Stage, list[Any]]:
    import torch

    from featdump.run.copies import resolve

    pixels = torch.cat([first] * -(-bs // len(first)))[:bs]
    out = resolve(forward(pixels))  # warm-up
    k, t0 = 0, time.perf_counter()
    while k == 0 or time.perf_counter() - t0 < budget:
        out = resolve(forward(pixels))
        k += bs
    return Stage("forward", k, time.perf_counter() - t0, f"batch {bs}"), out


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
        while n == 0 or time.perf_counter() - t0 <= budget:
            store.append(Rows(outputs, [f"{n + i}" for i in range(b)], [], n + b))
            n += b
        store.finish()
        store.close()
        seconds = time.perf_counter() - t0
    return Stage("write", n, seconds, f"{cfg.compression}, {cfg.dtype}, {threads} thread(s), {n * sum(a[0].nbytes for a in outputs) / seconds / (1 << 20):.0f} MiB/s")


def _time_pipeline(folder: Path, backbone: Any, cfg: ExtractConfig, forward: Any, loader: Any, tuning: Any, budget: float) -> Stage:
    from featdump.run.writer import Writer

    with _scratch_store(folder, backbone.layers, cfg) as store:
        n = 0
        writer = Writer(store, tuning.queue_bytes, tuning.write_threads)
        try:
            for batch, k in _steady(loader, budget):
                feats = forward(batch.pixels) if batch.pixels is not None else []
                writer.put(Rows(feats, [f"{n + i}" for i in range(k)], [], n + k))
                n += k
        finally:
            writer.close()
        _steady.finished()
        store.finish()
    return _stage("pipeline", "decode + forward + write")
