"""Shard arithmetic (pure) and the one function that reads the launcher's environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from featdump.errors import UsageError


@dataclass(frozen=True)
class Placement:
    """Where this process stands: shard ``index`` of ``count``, and the launcher that said so."""

    index: int = 0
    count: int = 1
    source: str = "default"
    local_rank: int | None = None
    cpus: int | None = None


def shard_bounds(num_items: int, index: int, count: int) -> tuple[int, int]:
    """Half-open range ``[start, stop)`` of block ``index`` of ``count`` contiguous, near-equal blocks.

    The first ``num_items % count`` blocks get one item more, so sizes differ by at most one and
    the blocks, taken in order, cover ``range(num_items)`` exactly once.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count} is not 0 <= I < N")
    if num_items < 0:
        raise ValueError("num_items must be >= 0")
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    stop = start + base + (1 if index < extra else 0)
    return start, stop


def shard_output_path(output: str, index: int, count: int) -> str:
    """``feats.h5`` -> ``feats.shard-00003-of-00008.h5`` when ``count > 1``; ``{shard}``/``{num_shards}`` fill in."""
    if "{shard" in output or "{num_shards" in output:
        try:
            return output.format(shard=index, num_shards=count)
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"-o {output!r}: only {{shard}} and {{num_shards}} may be filled in ({exc})") from None
    if count == 1:
        return output
    stem, dot, ext = output.rpartition(".")
    if not dot or "/" in ext:
        stem, ext = output, "h5"
    return f"{stem}.shard-{index:05d}-of-{count:05d}.{ext}"


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    if not re.fullmatch(r"\s*-?\d+\s*", raw):
        raise UsageError(f"environment variable {name}={raw!r} is not a whole number")
    return int(raw)


def placement_from_env(env: Mapping[str, str] | None = None) -> Placement:
    """Read this process's shard from torchrun (``RANK``/``WORLD_SIZE``) or a Slurm job array.

    torchrun wins over Slurm. ``SLURM_ARRAY_TASK_ID`` is offset by ``SLURM_ARRAY_TASK_MIN`` so that
    ``--array=1-8`` works; a stepped array (``0-15:4``) is refused because task ids would not be
    contiguous. ``SLURM_CPUS_PER_TASK`` is passed on for thread and worker counts.
    """
    env = os.environ if env is None else env
    cpus = _int(env, "SLURM_CPUS_PER_TASK")
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    if rank is not None and world is not None:
        if world < 1 or not 0 <= rank < world:
            raise UsageError(f"RANK={rank} WORLD_SIZE={world} is not a valid torchrun placement")
        return Placement(rank, world, "torchrun", _int(env, "LOCAL_RANK"), cpus)
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
        if step != 1:
            raise UsageError(
                f"Slurm array step is {step}: featdump needs contiguous task ids (e.g. --array=0-7), "
                "or pass --shard I/N yourself"
            )
        first = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
        count = _int(env, "SLURM_ARRAY_TASK_COUNT")
        if count is None:
            last = _int(env, "SLURM_ARRAY_TASK_MAX")
            if last is None:
                raise UsageError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
            count = last - first + 1
        index = task - first
        if count < 1 or not 0 <= index < count:
            raise UsageError(
                f"Slurm array task {task} is outside {first}..{first + count - 1}; "
                "featdump needs contiguous task ids (e.g. --array=0-7), or pass --shard I/N"
            )
        return Placement(index, count, "slurm", None, cpus)
    return Placement(0, 1, "default", None, cpus)
