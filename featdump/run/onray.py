"""``extract --ray``: one Ray task per unfinished shard (its run with ``resume=True``: a retry or a
rerun goes on from the file's last commit), then a virtual merge at ``-o``. Ray schedules and retries;
featdump submits and waits. Tasks run in the driver's working directory; ``-o``'s folder must be
storage every node sees (:func:`check_nodes`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from featdump.errors import FeatdumpError, Interrupted, UsageError
from featdump.options import ExtractConfig
from featdump.progress import Counter
from featdump.run.placement import shard_output_path
from featdump.run.results import ProgressSink
from featdump.run.signals import StopToken
from featdump.store.merge import MergeSummary, merge_shards
from featdump.text import first_line


def run_on_ray(cfg: ExtractConfig, progress: ProgressSink | None = None, stop: StopToken | None = None) -> MergeSummary:
    """Run every unfinished shard of ``cfg`` as a Ray task, then merge the shards into ``cfg.output``."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray installed where featdump runs: pip install 'featdump[ray]'") from None
    from featdump.data.sources import open_source
    from featdump.store.mergecheck import read_shard
    from featdump.store.output import preflight

    if shard_output_path(cfg.output, 0, 1) != cfg.output:  # -o holds {shard}: it names the shards, not the merge
        raise UsageError(f"--ray merges the shards into -o: give it a file name, not the template {cfg.output!r}")
    count = int(cfg.shards or 1)
    paths = [shard_output_path(cfg.output, i, count) for i in range(count)]
    preflight(Path(cfg.output), cfg)  # -o: a regular file or nothing, its folder made; the merge replaces it
    total = open_source(cfg.inputs, cfg).select(0, 1).length  # also checks the inputs before Ray starts
    done: dict[int, int] = {}  # complete shards: inputs done
    for i, path in enumerate(paths):
        with contextlib.suppress(FeatdumpError):  # none yet, or one it cannot read: its task says why
            shard = read_shard(path)
            if shard.complete:
                done[i] = shard.inputs_done
    progress, started = progress or ProgressSink(), not ray.is_initialized()
    if started:
        ray.init(address=cfg.ray, logging_level=logging.ERROR, log_to_driver=False)
    try:
        check_nodes(ray, cfg.output)
        gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        needs = {"num_gpus": 1 if gpu else 0, "num_cpus": (cfg.workers or 0) + 1}  # CPU tasks: the decoding workers + 1
        task = ray.remote(_shard).options(**needs, max_retries=cfg.ray_retries, retry_exceptions=True)
        pin = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
        here = pin(ray.get_runtime_context().get_node_id(), soft=True)  # the driver's node: not one that dies
        restart = {"max_restarts": -1, "max_task_retries": -1}  # a lost node may hold it anyway: it starts again
        counts: Any = ray.remote(_Counts).options(num_cpus=0, scheduling_strategy=here, **restart).remote()
        shard_cfg = dataclasses.replace(cfg, ray=None, shards=None, resume=True, overwrite=False, quiet=True,
                                        device="cuda" if gpu else cfg.device)  # fmt: skip
        cwd = os.getcwd()
        pending = {task.remote(dataclasses.replace(shard_cfg, shard=(i, count)), cwd, counts): i for i in range(count) if i not in done}
        failed: dict[int, BaseException] = {}
        progress.start(total, sum(done.values()), cfg.model)
        shown = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - Ray's errors: the task's own (RayTaskError) or a lost worker/node
                    failed[index] = getattr(exc, "cause", None) or exc
            now = int(ray.get(counts.total.remote()))
            if now > shown:  # a retried shard starts again from its last commit: the bar waits for it
                progress.advance(now - shown)
                shown = now
            if stop is not None and stop.stopped:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise Interrupted("stopped; the shard files keep their last commits: run the same command again to resume them")
    finally:
        progress.stop()
        if started:
            ray.shutdown()
    if failed:
        (index, error), more = min(failed.items()), f" (and {len(failed) - 1} more shard(s))" if len(failed) > 1 else ""
        raise FeatdumpError(f"shard {index}/{count} ({paths[index]}) failed after {cfg.ray_retries} retries: "
                            f"{first_line(error)}{more}; run the same command again to resume the unfinished shards")  # fmt: skip
    summary = merge_shards(paths, cfg.output, overwrite=cfg.overwrite or cfg.resume, command=cfg.command)
    if cfg.strict and summary.num_failed:
        raise FeatdumpError(f"{summary.num_failed} image(s) failed (--strict); see /failed in {summary.output}")
    return summary


def _shard(cfg: ExtractConfig, cwd: str, counts: Any) -> None:
    """One Ray task: the shard's run, in the driver's working directory, its progress sent to ``counts``."""
    from featdump.run.job import run_extraction

    with contextlib.chdir(cwd):
        run_extraction(cfg, _Report(counts, cfg.shard[0] if cfg.shard else 0))


class _Report(Counter, ProgressSink):
    """A task's progress: images done in its shard (a retry starts from what its file holds)."""

    def __init__(self, counts: Any, index: int) -> None:
        self.counts, self.index = counts, index

    def advance(self, images: int) -> None:
        super().advance(images)
        self.counts.put.remote(self.index, self.done)


class _Counts:
    """The Ray actor holding each running shard's images done, for the driver's one progress bar."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def put(self, index: int, done: int) -> None:
        self.done[index] = done

    def total(self) -> int:
        return sum(self.done.values())


def check_nodes(ray: Any, output: str) -> None:
    """Refuse (UsageError) when a live Ray node does not see the file the driver writes next to ``output``."""
    folder = Path(os.path.abspath(output)).parent
    marker, token = folder / f".featdump-ray-check-{secrets.token_hex(6)}", secrets.token_hex(8)
    marker.write_text(token)  # preflight saw that the folder is writable
    try:
        nodes, check, pin = [n for n in ray.nodes() if n["Alive"]], ray.remote(sees), ray.util.scheduling_strategies
        pins = [pin.NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in nodes]
        refs = [check.options(num_cpus=0, max_retries=0, scheduling_strategy=p).remote(str(marker), token) for p in pins]
        for node, seen in zip(nodes, ray.get(refs), strict=True):
            if seen:
                where = f"node {node['NodeManagerAddress']} {seen}"
                raise UsageError(f"-o {output} is not on storage every Ray node sees: {where}; put it on a shared file system")
    finally:
        marker.unlink(missing_ok=True)


def sees(marker: str, token: str) -> str | None:
    """None when this machine reads ``token`` from ``marker``; else what it found instead (run on each node)."""
    try:
        found = Path(marker).read_text()
    except OSError as exc:
        return f"cannot read {marker} ({exc.strerror or exc})"
    return None if found == token else f"reads another file at {marker}"
