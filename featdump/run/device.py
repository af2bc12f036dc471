"""Where a run computes and how it uses the machine: the device, the CPU budget, batch size and workers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

from featdump.environment import WRITE_THREADS
from featdump.errors import UsageError
from featdump.options import ExtractConfig
from featdump.run.placement import Placement


def resolve_device(spec: str, local_rank: int | None = None) -> Any:
    """``auto|cpu|cuda|cuda:N|mps`` -> torch.device; a device that is not there exits 2."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            index = local_rank if local_rank is not None else 0
            return torch.device("cuda", index % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA GPU is available here; use --device cpu (or auto)")
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise UsageError(f"--device {spec!r} is not a device name; use cuda or cuda:N") from None
        if dev.index is None:
            dev = torch.device("cuda", local_rank or 0)
        if dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)")
        return dev
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps: Apple's Metal backend is not available here; use --device cpu (or auto)")
        return torch.device("mps")
    raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {spec!r}")


def cpu_budget(placement: Placement) -> int:
    """Slurm's --cpus-per-task (or this process's CPU affinity), split among torchrun's local copies."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    return placement.cpu_budget(available)


CPU_BATCH = 8  # batch size on CPUs, channels_last: 16 where the weights exceed LARGE_WEIGHTS (bench/cpubatch.py)
LARGE_WEIGHTS = 32 << 20  # bytes: resnet18 (45 MB) and larger gain 3-8% at batch 16; efficientnets (<= 14 MB) nothing
SMALL_INPUT = 288 * 288  # pixels: the input sizes measured; larger ones would double the activations' memory
WRITE_QUEUE_BYTES = 256 << 20  # the writer's queue: enough for a few large batches, never more


@dataclass(frozen=True)
class Tuning:
    """How one run uses the machine (see :func:`tune`)."""

    batch_size: int
    workers: int  # decoding threads on CPU, DataLoader processes on CUDA/MPS (0: in the main thread)
    threads: int | None  # torch intra-op threads for the forward pass (None: leave torch's default)
    channels_last: bool
    prefetch: int = 2  # batches each worker decodes ahead
    decode_nice: int = 0  # CPU: the decode threads' nice value (19 where they share the forward pass's cores)
    queue_bytes: int = WRITE_QUEUE_BYTES  # feature bytes waiting for the writer, at most
    write_threads: int = 1  # threads preparing (compressing) chunks for the writer: the cores left over


def write_threads(cpus: int, busy: int) -> int:
    """The writer's chunk-preparing threads: ``FEATDUMP_WRITE_THREADS``, else the cores of the
    budget that decoding and the forward pass leave over (1-8)."""
    return WRITE_THREADS.value() or max(1, min(8, cpus - busy))


def cpu_batch(backbone: Any) -> int:
    """The CPU batch size for a built backbone (None: not built yet): twice :data:`CPU_BATCH` where its
    weights exceed :data:`LARGE_WEIGHTS`, so that a batch reuses weights that do not stay in the cache,
    and its input (a size mode's nominal square, a tile) is at most :data:`SMALL_INPUT` pixels. ``short:S``
    keeps it: its square is the least input, not the largest (a 4:3 photo at short:256 is 256x352)."""
    if backbone is None or (backbone.data.size_mode or ("",))[0] == "short" or math.prod(backbone.data.input_size[1:]) > SMALL_INPUT:
        return CPU_BATCH
    weights = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    return 2 * CPU_BATCH if weights > LARGE_WEIGHTS else CPU_BATCH


def tune(device: Any, cfg: ExtractConfig, placement: Placement, previous: dict[str, Any] | None = None, backbone: Any = None) -> Tuning:
    """Defaults per device, from measurements (``make bench``; figures: docs/performance.md); ``backbone``:
    the built one, for the CPU batch size (:func:`cpu_batch`; before it is built, the threads only).

    CPU: decoding runs in threads of this process (data/loading.py). Up to 4 cores they share all
    cores with the forward threads; on more, ``cpus // 8`` decode threads (1-8) and the forward pass
    gets the rest, because an OpenMP region waits for its slowest thread. The batch size follows the
    model (:func:`cpu_batch`), not timings, so reruns compute with the same kernels; a resume without --batch-size keeps its file's
    (``previous``: run/facts.py) on the same kind of device, so its rows are bit-identical.
    """
    cpus = cpu_budget(placement)
    if previous and not cfg.batch_size and str(previous.get("device", "")).split(":")[0] == device.type:
        cfg = replace(cfg, batch_size=int(previous["batch_size"]))
    if device.type == "cpu":
        workers = cfg.workers if cfg.workers is not None else cpus if cpus <= 4 else min(8, max(1, cpus // 8))
        shared = cpus <= 4  # decode threads and forward threads on the same cores
        threads = cpus if shared else cpus - workers
        return Tuning(cfg.batch_size or cpu_batch(backbone), workers, max(1, threads), True, prefetch=2, decode_nice=19 if shared else 0,
                      write_threads=write_threads(cpus, cpus))
    most = 4 if cfg.decode == "gpu" else 8  # --decode gpu: the workers only read files
    workers = cfg.workers if cfg.workers is not None else max(1, min(most, cpus - 1))
    return Tuning(cfg.batch_size or 64, workers, None, device.type == "cuda", prefetch=4,
                  write_threads=write_threads(cpus, workers + 1))


def check_decode(cfg: ExtractConfig, device: Any) -> None:
    """``--decode gpu`` needs a CUDA device and torchvision's decoder: exit 2 otherwise."""
    if cfg.decode != "gpu":
        return
    if device.type != "cuda":
        raise UsageError(
            f"--decode gpu decodes JPEGs on a CUDA GPU (torchvision's nvjpeg), but this run is on {device.type}; "
            "drop --decode gpu (or use --fast-decode for faster CPU decoding)"
        )
