"""``run_extraction(config) -> Summary``: images -> batches -> forward -> background HDF5 writer.

Decoding runs in threads (CPU runs, featdump/data/loading.py) or DataLoader worker processes (GPU
runs), the forward pass in this thread, and HDF5 writes in a writer thread behind a bounded queue,
so the three overlap. SIGINT/SIGTERM stop after the current batch with everything written so far
committed (exit 130); a second one exits at once, still leaving a file that ``--resume`` finishes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featdump import FORMAT_VERSION, __version__
from featdump.run.alloc import tune_malloc
from featdump.model.backbone import Backbone, LayerInfo, load_backbone
from featdump.options import ExtractConfig
from featdump.errors import FeatdumpError, Interrupted, UsageError
from featdump.data.images import Batch, ImageDataset, ImageRef, collate, discover, list_digest
from featdump.store.journal import fsync_dir
from featdump.data.loading import ThreadLoader
from featdump.run.placement import Placement, placement_from_env, shard_bounds, shard_output_path
from featdump.store.sink import NothingCommitted, Store, utc_now, zstd_level


# --------------------------------------------------------------------------- results


@dataclass
class LayerSummary:
    name: str
    module: str
    index: int
    reduction: int
    shape: tuple[int, ...]
    dtype: str
    stored_bytes: int
    raw_bytes: int


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

    @property
    def images_per_second(self) -> float:
        return self.images_this_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_second(self) -> float:
        """Feature data written per second of the run (uncompressed MiB/s)."""
        return self.bytes_written / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


class ProgressSink:
    """What the pipeline tells a progress display; the default shows nothing."""

    def start(self, total: int, done: int, description: str) -> None: ...

    def advance(self, images: int) -> None: ...

    def stop(self) -> None: ...


# --------------------------------------------------------------------------- devices


def resolve_device(spec: str, local_rank: int | None = None) -> Any:
    """``auto|cpu|cuda|cuda:N|mps`` -> torch.device; a device that is not there exits 2."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            index = local_rank if local_rank is not None else 0
            return torch.device("cuda", index % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
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
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
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


def tune(device: Any, cfg: ExtractConfig, placement: Placement) -> Tuning:
    """Defaults per device, from measurements (``make bench``; README, Performance).

    CPU: decoding runs in threads of this process (featdump/data/loading.py), since decoding + timm's
    transform costs ~5 ms per image against 7-30 ms for the forward pass. Up to 4 cores the
    decode threads share all the cores with the forward threads (on 2 cores, 2 + 2 threads were
    1.24x the serial decode + forward rate for tf_efficientnet_lite0, one worker process 1.10x);
    on more, ``cpus // 8`` decode threads (1-8) and the forward pass gets the other cores of the
    budget (Slurm's --cpus-per-task, else this process's affinity), because an OpenMP region
    waits for its slowest thread. Batches of 8 in channels_last: larger batches are slower on
    CPUs. The batch size is fixed, not timed per run, so reruns and resumed runs compute with the
    same kernels.
    CUDA: batches of 64, channels_last, threads left alone, DataLoader worker processes for up
    to 8 of the cores.
    """
    cpus = cpu_budget(placement)
    if device.type == "cpu":
        if cfg.workers is not None:
            workers = cfg.workers
        else:
            workers = cpus if cpus <= 4 else min(8, max(1, cpus // 8))
        shared = cpus <= 4  # decode threads and forward threads on the same cores
        threads = cpus if shared else cpus - workers
        return Tuning(cfg.batch_size or 8, workers, max(1, threads), True, prefetch=2, decode_nice=19 if shared else 0)
    workers = cfg.workers if cfg.workers is not None else max(1, min(8, cpus - 1))
    if cfg.decode == "gpu":  # workers only read files
        workers = cfg.workers if cfg.workers is not None else max(1, min(4, cpus - 1))
    return Tuning(cfg.batch_size or 64, workers, None, device.type == "cuda", prefetch=4)


# --------------------------------------------------------------------------- model step


def to_storage(out: Any, layer: LayerInfo, pool: str, dtype: Any) -> Any:
    """One layer's batch output -> the stored layout ((B,C,H,W), (B,T,D) or pooled (B,C))."""
    import torch

    if layer.layout == "NHWC":
        out = out.permute(0, 3, 1, 2)
    if pool != "none" and out.ndim > 2:
        if layer.layout == "NLC":  # pool the patch tokens only, like timm's global_pool="avg"
            out = out[:, int(layer.attrs.get("num_prefix_tokens", 0)) :]
        dims = (1,) if layer.layout == "NLC" else (2, 3)
        out = out.float()
        out = out.mean(dim=dims) if pool == "avg" else out.amax(dim=dims)
    return out.to(dtype=dtype, memory_format=torch.contiguous_format)  # one pass: cast and NCHW


class Forward:
    """Batch of pixels -> list of numpy arrays, one per stored layer."""

    def __init__(
        self,
        backbone: Backbone,
        device: Any,
        precision: str,
        pool: str,
        dtype: str,
        channels_last: bool,
        compile: bool = False,
    ) -> None:
        import torch

        self.model = backbone.model.to(device)
        self.layers = backbone.layers
        self.device = device
        self.pool = pool
        self.dtype = torch.float16 if dtype == "float16" else torch.float32
        self.channels_last = channels_last and device.type in ("cpu", "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast: Callable[[], Any]
        if precision == "fp32":
            self.autocast = contextlib.nullcontext
        else:
            amp = torch.float16 if precision == "fp16" else torch.bfloat16
            self.autocast = lambda: torch.autocast(device_type=device.type, dtype=amp)
        self.compiled = compile
        if compile:
            self.model = torch.compile(self.model)

    def __call__(self, pixels: Any) -> list[Any]:
        import torch

        with torch.inference_mode():
            x = pixels.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                outs = self._model(x)
            if isinstance(outs, dict):
                outs = list(outs.values())
            stored = [to_storage(o, layer, self.pool, self.dtype) for o, layer in zip(outs, self.layers)]
            if self.device.type != "cuda":
                return [s.cpu().numpy() for s in stored]
            host = [s.to("cpu", non_blocking=True) for s in stored]  # pinned; one sync for all
            torch.cuda.current_stream(self.device).synchronize()
            return [h.numpy() for h in host]

    def _model(self, x: Any) -> Any:
        if not self.compiled:
            return self.model(x)
        try:
            return self.model(x)
        except Exception as exc:  # noqa: BLE001 - inductor needs a compiler toolchain and more
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise FeatdumpError(f"--compile: torch.compile failed ({text[:300]}); run without --compile") from None


# --------------------------------------------------------------------------- writer thread


class Writer:
    """Owns the Store in a background thread, behind a queue bounded in bytes.

    ``put`` blocks while the feature arrays queued or being written would exceed ``max_bytes``;
    one batch is always admitted (however large), so memory stays below
    ``max(max_bytes, one batch)`` whatever the number of images.
    """

    _STOP = object()

    def __init__(self, store: Store, max_bytes: int = WRITE_QUEUE_BYTES) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.pending = 0  # bytes queued or being written
        self.peak = 0  # the most ``pending`` ever was (tests, bench)
        self.items: collections.deque[tuple[Any, int]] = collections.deque()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="featdump-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.items:
                    self.cond.wait()
                item, size = self.items[0]  # still counted while it is written
            if item is self._STOP:
                return
            if self.error is None:
                try:
                    t0 = time.perf_counter()
                    self.store.append(*item)
                    self.seconds += time.perf_counter() - t0
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc
            with self.cond:
                self.items.popleft()
                self.pending -= size
                self.cond.notify_all()

    def put(self, item: tuple[Any, ...]) -> None:
        self.raise_error()
        size = sum(int(getattr(a, "nbytes", 0)) for a in item[0])
        with self.cond:
            while self.pending and self.pending + size > self.max_bytes and self.error is None:
                self.cond.wait()
            self.items.append((item, size))
            self.pending += size
            self.peak = max(self.peak, self.pending)
            self.cond.notify_all()

    def raise_error(self) -> None:
        if self.error is not None:
            raise _write_error(self.store, self.error)

    def close(self) -> None:
        with self.cond:
            self.items.append((self._STOP, 0))
            self.cond.notify_all()
        self.thread.join()
        self.raise_error()


def _write_error(store: Store, exc: BaseException) -> FeatdumpError:
    import errno

    if isinstance(exc, FeatdumpError):
        return exc
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in text:
        return FeatdumpError(
            f"out of disk space writing {store.path}; free space and run again with --resume "
            f"({store.progress.num_images} images are safely stored)"
        )
    return FeatdumpError(f"cannot write {store.path}: {text}; rerun with --resume to continue")


# --------------------------------------------------------------------------- signals


_EARLY: list[int] = []  # signals that arrived before the batch loop took over (see early_signals)
_GUARDED: list[bool] = []  # non-empty while early_signals() guards a command (the CLI)


def _leave_at_once(signum: int, frame: Any) -> None:
    """A further signal once a stop is under way: one line, exit now (the file keeps its last commit)."""
    line = f"featdump: error: stopped at once by a second {signal.Signals(signum).name}; resume with --resume\n"
    os.write(2, line.encode("utf-8", "replace"))
    os._exit(128 + signum)


@contextlib.contextmanager
def early_signals() -> Iterator[None]:
    """From the start of a command until the batch loop: remember SIGINT/SIGTERM instead of raising.

    Start-up imports and builds a lot of third-party code, some of which swallows KeyboardInterrupt;
    a remembered signal cannot be lost there. It stops the run before anything is written, or
    (once the file exists) after the first batch. A second one leaves at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def remember(signum: int, frame: Any) -> None:
        if _EARLY:
            _leave_at_once(signum, frame)
        _EARLY.append(signum)

    _EARLY.clear()
    _GUARDED.append(True)
    old = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    interrupted = False
    try:
        yield
    except Interrupted:
        interrupted = True
        raise
    finally:
        # After a stop the process only reports and tears down: a further signal leaves at once
        # (one line) instead of raising KeyboardInterrupt somewhere in interpreter shutdown.
        for sig, handler in old.items():
            signal.signal(sig, _leave_at_once if interrupted else handler)
        _EARLY.clear()
        _GUARDED.clear()


def _stopped_early() -> None:
    if _EARLY:
        exc = Interrupted(f"stopped by {signal.Signals(_EARLY[0]).name} during start-up; nothing was written")
        exc.exit_code = 128 + _EARLY[0]
        raise exc


class StopFlag:
    """First SIGINT/SIGTERM: stop after the current batch. Second: leave at once (exit 130/143).

    Leaving at once is as safe as SIGKILL: the file on disk always holds its last commit. The
    handler writes its one line itself (``os.write``), since nothing else runs after ``os._exit``.
    """

    def __init__(self, hint: str = "") -> None:
        self.signum: int | None = None
        self.hint = hint
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            line = f"featdump: error: stopped at once by a second {signal.Signals(signum).name}; {self.hint}\n"
            try:
                os.write(2, line.encode("utf-8", "replace"))
            finally:
                os._exit(128 + signum)
        self.signum = signum

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        if _EARLY and self.signum is None:  # arrived while the file was being opened
            self.signum = _EARLY[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.signum is None:
            self.restore()
        # After a stop the handlers stay until the run has committed and closed its file
        # (restore() at the very end), so a second signal during that clean-up still exits at once.

    def restore(self) -> None:
        if self.signum is not None and _GUARDED:
            return  # early_signals() takes over: a further signal must still leave at once
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    @property
    def stopped(self) -> bool:
        return self.signum is not None


def _worker_init(_: int) -> None:
    # Ctrl-C goes to the whole process group; the main process decides when to stop.
    # Slurm and `kill -TERM -PGID` signal every process: workers ignore both and end with the
    # DataLoader (or, if the main process dies, by PyTorch's parent watchdog).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# --------------------------------------------------------------------------- the run


def resolve_placement(cfg: ExtractConfig) -> Placement:
    """``--shard I/N`` wins over the launcher's environment (which still gives LOCAL_RANK and CPUs)."""
    return placement_from_env(shard=cfg.shard)


def select_images(cfg: ExtractConfig, placement: Placement) -> tuple[list[ImageRef], str, int, str]:
    """This shard's slice of the sorted input list and its digest; the whole list's size and digest."""
    refs = discover(cfg.inputs)
    start, stop = shard_bounds(len(refs), placement.index, placement.count)
    mine = refs[start:stop]
    return mine, list_digest(mine), len(refs), list_digest(refs)


def file_attrs(cfg: ExtractConfig, backbone: Backbone, placement: Placement, digest: str, count: int) -> dict[str, Any]:
    import timm
    import torch

    from featdump.options import option_attrs

    data = backbone.data
    return {
        "format": "featdump",
        "format_version": FORMAT_VERSION,
        "featdump_version": __version__,
        "model": cfg.model,
        "weights": backbone.weights,
        "timm_version": timm.__version__,
        "torch_version": torch.__version__,
        "input_size": list(data.input_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct,
        "crop_mode": data.crop_mode,
        "out_indices": [layer.index for layer in backbone.layers] if not cfg.layers else [],
        "layers": [layer.name for layer in backbone.layers],
        **option_attrs(cfg),  # tokens, output_stride, precision, dtype, pool, compression, decode, ...
        "created": utc_now(),
        "command": cfg.command,
        "shard": [placement.index, placement.count],
        "num_inputs": count,
        "input_digest": digest,
    }


def _preflight(path: Path, cfg: ExtractConfig) -> None:
    """Refuse early, before any model is built: an existing output, a missing or unwritable folder,
    a bad ``FEATDUMP_ZSTD_LEVEL``."""
    if cfg.compression == "zstd":
        zstd_level()
    if path.exists() and not (cfg.resume or cfg.overwrite):
        raise UsageError(f"{path} exists; pass --resume to continue it or --overwrite to replace it")
    if path.is_dir():
        raise UsageError(f"-o {path} is a folder; name an .h5 file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        try:
            why = "is on a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "is not writable"
        except OSError:
            why = "is not writable"
        keep = f"; {path.name} is untouched and stays resumable there" if path.exists() else ""
        raise FeatdumpError(f"cannot write the output: folder {parent} {why}{keep}; choose a writable folder for -o")


def overwrite_path(path: Path) -> Path:
    """Where ``--overwrite`` writes the new file until it replaces ``path`` (``--resume`` finds it there)."""
    return path.with_name(f"{path.name}.featdump-new")


@dataclass
class Output:
    """The file being written, and (for --overwrite) the target it replaces at the end."""

    store: Store
    target: Path
    lock: Any = None  # OutputLock on the target while a replacement for it is written

    @property
    def replacing(self) -> bool:
        return self.store.path != self.target

    def finish(self) -> None:
        """After a successful run: move the replacement into place (atomically), let go of the target."""
        if self.replacing:
            try:
                os.replace(self.store.path, self.target)
                fsync_dir(self.target)
            except OSError as exc:
                raise FeatdumpError(
                    f"cannot replace {self.target} with {self.store.path}: {exc.strerror or exc}; "
                    "rerun with --resume to try again"
                ) from None
        if self.lock is not None:
            self.lock.release(remove=True)  # a journal of the old target no longer applies to anything
            self.lock = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release(remove=self.lock.created)
            self.lock = None


def open_output(cfg: ExtractConfig, out_path: Path, attrs: dict[str, Any], layers: Sequence[LayerInfo]) -> Output:
    """Create, continue or replace the output, as ``--resume`` / ``--overwrite`` ask.

    ``--resume`` continues, in this order: an unfinished ``--overwrite`` run (``OUT.h5.featdump-new``,
    which replaces OUT.h5 when it completes), then OUT.h5 itself; with neither it starts OUT.h5, so
    one command line serves the first run and every requeue. A complete file is left as it is.
    """
    from featdump.store.journal import OutputLock

    def create(path: Path) -> Store:
        return Store.create(path, attrs, layers, pool=cfg.pool, dtype=cfg.dtype, compression=cfg.compression)

    new = overwrite_path(out_path)
    if cfg.resume and new.exists():
        lock = OutputLock(out_path)
        try:
            try:
                store = Store.resume(new, attrs, layers)
            except NothingCommitted:
                store = create(new)
        except BaseException:
            lock.release(remove=lock.created)
            raise
        return Output(store, out_path, lock)
    if cfg.resume and out_path.exists():
        try:
            return Output(Store.resume(out_path, attrs, layers), out_path)
        except NothingCommitted:
            pass
    if cfg.overwrite and out_path.exists():
        lock = OutputLock(out_path)
        try:
            if new.exists() or Path(f"{new}-journal").exists():  # an earlier --overwrite that did not finish
                stale = OutputLock(new)
                new.unlink(missing_ok=True)
                stale.release(remove=True)
            store = create(new)
        except BaseException:
            lock.release(remove=lock.created)
            raise
        return Output(store, out_path, lock)
    return Output(create(out_path), out_path)


def decode_mode(cfg: ExtractConfig) -> str:
    """The file's ``decode`` attribute: ``exact`` (timm's transform on PIL, the default), ``fast``
    (``--fast-decode``: JPEG DCT scaling / reduce before resize) or ``gpu`` (``--decode gpu``)."""
    if cfg.decode == "gpu":
        return "gpu"
    return "fast" if cfg.fast_decode else "exact"


def check_decode(cfg: ExtractConfig, device: Any) -> None:
    """``--decode gpu`` needs a CUDA device and torchvision's decoder: exit 2 otherwise."""
    if cfg.decode != "gpu":
        return
    if device.type != "cuda":
        raise UsageError(
            f"--decode gpu decodes JPEGs on a CUDA GPU (torchvision's nvjpeg), but this run is on {device.type}; "
            "drop --decode gpu (or use --fast-decode for faster CPU decoding)"
        )
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        raise UsageError("--decode gpu needs torchvision (pip install torchvision)") from None


class Loader:
    """Decoded batches in list order: DataLoader workers decode and transform (each
    ``tuning.prefetch`` batches ahead), pinned memory on CUDA; with ``--decode gpu`` the workers only read JPEG bytes
    and :class:`DeviceDecoder` finishes each batch on the device in this thread."""

    def __init__(self, todo: Sequence[ImageRef], backbone: Backbone, cfg: ExtractConfig, device: Any, tuning: Tuning):
        import functools

        import torch

        from featdump.data.images import DeviceDecoder, EncodedDataset, fast_decode_size, load_rgb

        transform = backbone.data.transform()
        self.decoder: Any = None
        if cfg.decode == "gpu":
            dataset: ImageDataset = EncodedDataset(todo, transform, cfg.max_image_pixels)
            self.decoder = DeviceDecoder(transform, device)
        elif cfg.fast_decode:
            size = fast_decode_size(backbone.data.input_size, backbone.data.crop_pct)
            dataset = ImageDataset(todo, transform, cfg.max_image_pixels, functools.partial(load_rgb, shrink_to=size))
        else:
            dataset = ImageDataset(todo, transform, cfg.max_image_pixels)
        batches = -(-len(todo) // tuning.batch_size)
        workers = min(tuning.workers, max(1, batches))  # no idle processes for a handful of images
        self.loader: Any
        if device.type == "cpu" and self.decoder is None:  # threads: see featdump/data/loading.py
            self.loader = ThreadLoader(dataset, tuning.batch_size, workers, tuning.prefetch, tuning.decode_nice)
            return
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=tuning.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=tuning.prefetch if workers else None,
            persistent_workers=False,  # one pass over the list: workers live exactly as long as it
        )

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield self.decoder(batch) if self.decoder is not None else batch


def _batches(loader: Any, stop: StopFlag) -> Iterator[Batch]:
    for batch in loader:
        yield batch
        if stop.stopped:
            return


def run_extraction(
    cfg: ExtractConfig,
    progress: ProgressSink | None = None,
    on_ready: Callable[[Backbone, str, Placement], None] | None = None,
) -> Summary:
    """The whole ``extract`` job. Raises FeatdumpError subclasses; never prints."""
    import torch

    progress = progress or ProgressSink()
    placement = resolve_placement(cfg)
    out_path = Path(shard_output_path(cfg.output, placement.index, placement.count))
    _preflight(out_path, cfg)
    refs, digest, total, total_digest = select_images(cfg, placement)
    device = resolve_device(cfg.device, placement.local_rank)
    check_decode(cfg, device)
    tuning = tune(device, cfg, placement)
    tune_malloc()  # before the model's and the activations' memory is allocated
    if tuning.threads:
        torch.set_num_threads(tuning.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # here, not at import: fixed input size, fastest kernels

    if not cfg.pretrained and not cfg.checkpoint:
        torch.manual_seed(0)  # --no-pretrained: the same random weights every run, so --resume matches
    backbone = load_backbone(
        cfg.model,
        out_indices=cfg.out_indices,
        output_stride=cfg.output_stride,
        img_size=cfg.img_size,
        pretrained=cfg.pretrained,
        checkpoint=cfg.checkpoint,
        layers=cfg.layers,
        tokens=cfg.tokens,
    )
    attrs = file_attrs(cfg, backbone, placement, digest, len(refs))
    attrs.update(list_size=total, list_digest=total_digest)  # the whole list: merge checks shards agree
    if on_ready:
        on_ready(backbone, str(out_path), placement)

    _stopped_early()
    output = open_output(cfg, out_path, attrs, backbone.layers)
    store = output.store
    resumed_from = store.progress.inputs_done
    started = time.perf_counter()
    finished = False
    stop = StopFlag(f"{store.path} keeps its last commit; resume with --resume")
    try:
        if resumed_from > len(refs):
            raise UsageError(f"--resume: {out_path} has {resumed_from} inputs done but the list has {len(refs)}")
        todo = refs[resumed_from:]
        loader = Loader(todo, backbone, cfg, device, tuning)
        forward = Forward(backbone, device, cfg.precision, cfg.pool, cfg.dtype, tuning.channels_last, cfg.compile)
        writer = Writer(store, tuning.queue_bytes)
        progress.start(len(refs), resumed_from, cfg.model)
        with stop:
            try:
                for batch in _batches(loader, stop):
                    feats = forward(batch.pixels) if batch.pixels is not None else []
                    paths = [todo[i].path for i in batch.positions]
                    failed = [(todo[i].path, err) for i, err in batch.failed]
                    writer.put((feats, paths, failed, resumed_from + batch.last + 1))
                    progress.advance(len(batch.positions) + len(batch.failed))
            finally:
                writer.close()
            if stop.stopped:
                raise _interrupted(stop.signum, store, output)
        store.finish()
        finished = True
    except KeyboardInterrupt:  # Ctrl-C outside the loop: what was written is still committed below
        raise _interrupted(signal.SIGINT, store, output) from None
    finally:
        progress.stop()
        seconds = time.perf_counter() - started
        try:
            summary = summarize(store, out_path, backbone, str(device), placement, len(refs), seconds, resumed_from)
        except Exception:  # noqa: BLE001 - only reached when already failing; that error wins
            if finished:
                raise
        try:
            store.close()
            if finished:
                output.finish()
        finally:
            output.release()
            stop.restore()
    return summary


def _interrupted(signum: int, store: Store, output: Output) -> Interrupted:
    """The one-line "stopped; resume with --resume" message; exit 130 (SIGINT) or 143 (SIGTERM)."""
    where = f"in {store.path}"
    if output.replacing:
        where += f" ({output.target} is replaced by it when it completes)"
    exc = Interrupted(
        f"stopped by {signal.Signals(signum).name} after committing {store.progress.num_images} images {where}; "
        "resume with --resume (the same command, with --resume instead of --overwrite)"
        if output.replacing
        else f"stopped by {signal.Signals(signum).name} after committing {store.progress.num_images} images {where}; "
        "resume with --resume (the same command plus --resume)"
    )
    exc.exit_code = 128 + int(signum)
    return exc


def summarize(
    store: Store,
    out_path: Path,
    backbone: Backbone,
    device: str,
    placement: Placement,
    num_inputs: int,
    seconds: float,
    resumed_from: int,
) -> Summary:
    h5 = store.h5
    layers = []
    for layer in backbone.layers:
        ds = h5["features"][layer.name]
        raw = int(ds.dtype.itemsize) * int(ds.size)
        layers.append(
            LayerSummary(
                layer.name, layer.module, layer.index, layer.reduction, tuple(ds.shape[1:]), str(ds.dtype),
                int(ds.id.get_storage_size()), raw,
            )
        )
    fp, fe = h5["failed"]["paths"], h5["failed"]["errors"]
    shown = min(len(fp), 20)
    failures = [(_s(fp[i]), _s(fe[i])) for i in range(shown)]
    return Summary(
        output=str(out_path),
        model=backbone.name,
        weights=backbone.weights,
        device=device,
        num_images=store.progress.num_images,
        num_failed=store.progress.num_failed,
        num_inputs=num_inputs,
        shard=(placement.index, placement.count),
        layers=layers,
        failures=failures,
        seconds=seconds,
        images_this_run=store.progress.inputs_done - resumed_from,
        resumed_from=resumed_from,
        complete=bool(h5.attrs.get("complete", False)),
        bytes_written=int(getattr(store, "bytes_written", 0)),
    )


def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
