"""The ``extract`` job: source -> loader -> forward -> writer -> summary, wired in one short loop.

The stages are handed in (:class:`Stages`). The writer thread appends each batch's
:class:`~featdump.data.batching.Rows` whole, so the loop knows nothing of ids, tar marks or geometry.
It ends with the loader (on an error, every earlier batch is written first) or after the current
batch once a stop is requested (run/signals.py).
"""

from __future__ import annotations

import signal
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from featdump.data.batching import Rows
from featdump.data.remote import StoreStopped
from featdump.data.sources import Source, open_source
from featdump.data.tiles import loader as pick_loader
from featdump.errors import FeatdumpWarning, Interrupted, UsageError
from featdump.model.backbone import backbone_for
from featdump.model.layers import Backbone, LayerInfo
from featdump.model.levels import described_levels
from featdump.options import ExtractConfig
from featdump.run import processors
from featdump.run.device import check_decode, resolve_device, tune
from featdump.run.facts import previous_facts, rounding_note
from featdump.run.forward import Forward
from featdump.run.placement import Placement, placement_from_env, shard_output_path
from featdump.run.process import torch_settings, tune_malloc
from featdump.run.results import ProgressSink, Summary, summarize
from featdump.run.signals import SignalWatch, StopToken, raise_keyboard_interrupt
from featdump.run.space import check_space
from featdump.run.writer import Writer
from featdump.store.output import Output, file_attrs, open_output, preflight, resume_attrs
from featdump.values import size_mode_text


@dataclass(frozen=True)
class Stages:
    """The job's parts: ``source(inputs, cfg)``, ``loader(refs, backbone, cfg, device, batch_size,
    workers, prefetch, decode_nice, length, start)`` (yields :class:`Rows`), ``backbone(cfg)`` and
    ``output(cfg, path, attrs, layers)`` (an :class:`Output`, a context manager)."""

    source: Callable[[Sequence[str], ExtractConfig], Source] = open_source
    loader: Callable[..., Iterable[Rows]] = pick_loader  # Loader, or TileLoader for --tiles
    backbone: Callable[[ExtractConfig], Backbone] = backbone_for
    output: Callable[[ExtractConfig, Path, dict, Sequence[LayerInfo]], Output] = open_output


def run_extraction(
    cfg: ExtractConfig,
    progress: ProgressSink | None = None,
    on_ready: Callable[[Backbone, str, Placement], None] | None = None,
    stop: StopToken | None = None,
    on_repeat: Callable[[int], None] = raise_keyboard_interrupt,
    stages: Stages = Stages(),
) -> Summary:
    """The whole ``extract`` job. Raises FeatdumpError subclasses (:class:`Interrupted` after a stop
    request); a repeated signal calls ``on_repeat`` (default: ``KeyboardInterrupt`` in the caller)."""
    stop = stop or StopToken()
    with SignalWatch(stop, on_repeat):  # restored only once the run's clean-up is done: a signal there is a repeat
        try:
            return _run(cfg, progress or ProgressSink(), on_ready, stop, stages)
        except StoreStopped:  # a stop request cut a remote lookup of the start-up (the loop reports its own)
            if not stop.stopped:
                raise
            raise _stopped(stop.signum or signal.SIGINT, "during start-up; nothing was written") from None


def _run(cfg: ExtractConfig, progress: ProgressSink, on_ready: Callable | None, stop: StopToken, stages: Stages) -> Summary:
    placement = placement_from_env(shard=cfg.shard)  # --shard wins over the launcher's environment
    out_path = Path(shard_output_path(cfg.output, placement.index, placement.count))
    preflight(out_path, cfg)
    selection = stages.source(cfg.inputs, cfg).select(placement.index, placement.count)
    procs = processors.load(cfg.process)  # unknown processors and bad arguments: usage errors before the model
    cfg = replace(cfg, process=processors.recorded(procs))  # files they read pinned by sha256
    resumed = resume_attrs(out_path) if cfg.resume else None  # read once: the space check and the tuning
    described_levels.cache_clear()  # this run's model, as timm and the hub give it now
    if cfg.space_check:
        check_space(cfg, out_path, selection, procs, resumed)
    device = resolve_device(cfg.device, placement.local_rank)
    check_decode(cfg, device)
    previous = previous_facts(resumed)
    tuning = tune(device, cfg, placement, previous)  # a resumed run keeps its file's batch size
    tune_malloc()  # before the model's and the activations' memory is allocated
    with torch_settings(device, tuning.threads, shapes_vary=bool(size_mode_text(cfg.img_size))):
        backbone = stages.backbone(cfg)
        tuning = tune(device, cfg, placement, previous, backbone)  # the CPU batch follows the weights' size
        backbone.layers = processors.stored_layers(backbone, cfg.pool, procs, device)
        if on_ready:
            on_ready(backbone, str(out_path), placement)
        if stop.stopped:
            raise _stopped(stop.signum or signal.SIGINT, "during start-up; nothing was written")
        facts = {"batch_size": tuning.batch_size, "device": str(device)}  # the file attributes of the run that made it
        if note := rounding_note(previous, facts):
            warnings.warn(note, FeatdumpWarning, stacklevel=2)
        attrs = {**file_attrs(cfg, backbone, placement.shard, selection), **facts}
        with stages.output(cfg, out_path, attrs, backbone.layers) as output:
            store, length = output.store, selection.length  # length: None while a stream's is unknown
            stop.hint = f"{store.path} keeps its last commit; resume with --resume"
            done, started = store.progress.inputs_done, time.perf_counter()
            if length is not None and done > length:
                raise UsageError(f"--resume: {out_path} has {done} inputs done but the list has {length}")
            try:
                todo, left = selection.stream(done, store.mark), (length - done if length is not None else None)
                loader = stages.loader(todo, backbone, cfg, device, tuning.batch_size, tuning.workers, tuning.prefetch,
                                       tuning.decode_nice, left, done)  # fmt: skip
                forward = Forward(backbone, device, cfg.precision, cfg.pool, cfg.dtype, tuning.channels_last,
                                  cfg.compile, procs)  # fmt: skip
                progress.start(length, done, cfg.model)
                _loop(loader, forward, Writer(store, tuning.queue_bytes, tuning.write_threads), progress, stop)
                if stop.stopped:
                    raise _interrupted(stop.signum or signal.SIGINT, output)
                store.finish()
            except KeyboardInterrupt:
                if stop.stopped:
                    raise  # a repeated signal: KeyboardInterrupt for the caller (the CLI has left already)
                raise _interrupted(signal.SIGINT, output) from None  # one raised by other code
            finally:
                progress.stop()
            total = length if length is not None else store.progress.inputs_done
            seconds = time.perf_counter() - started
            summary = summarize(store, out_path, backbone, str(device), placement, total, seconds, done)
            import torch  # imported by now (the device, the model)

            summary.threads, summary.workers = torch.get_num_threads(), tuning.workers
            for layer, count in zip(summary.layers, forward.nonfinite(), strict=True):
                layer.nonfinite = count  # NaN/inf values this run wrote
    return summary


def _loop(loader: Iterable[Rows], forward: Forward, writer: Writer, progress: ProgressSink, stop: StopToken) -> None:
    """Each batch through the model to the writer, until the loader ends (or raises) or a stop is requested."""
    try:
        for rows in loader:
            rows.features, rows.pixels = forward(rows.pixels) if rows.pixels is not None else [], None
            writer.put(rows)
            progress.advance(rows.finished())
            if stop.stopped:
                break
    except KeyboardInterrupt:
        writer.discard()  # a repeated signal: leave quickly, the file keeps its last commit
        raise
    except StoreStopped:
        if not stop.stopped:
            raise  # else a stop request cut an image fetch: the caller reports the interruption
    finally:
        writer.close()


def _stopped(signum: int, what: str) -> Interrupted:
    exc = Interrupted(f"stopped by {signal.Signals(signum).name} {what}")
    exc.exit_code = 128 + int(signum)
    return exc


def _interrupted(signum: int, output: Output) -> Interrupted:
    """The one-line "stopped; resume with --resume" message; exit 130 (SIGINT) or 143 (SIGTERM)."""
    store = output.store
    where = f"in {store.path}"
    how = "the same command plus --resume"
    if output.replacing:
        where += f" ({output.target} is replaced by it when it completes)"
        how = "the same command, with --resume instead of --overwrite"
    return _stopped(
        signum, f"after committing {store.progress.num_images} images {where}; resume with --resume ({how})"
    )
