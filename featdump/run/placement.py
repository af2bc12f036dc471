"""Where this process stands among N copies: the one function that reads the launcher's environment,
and the shard's output name (the blocks themselves: :func:`featdump.data.sources.shard_bounds`).
A job array (Slurm) or a process group (torchrun) starts N copies (docs/cluster.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from featdump.errors import UsageError


@dataclass(frozen=True)
class Placement:
    """Shard ``index`` of ``count`` and the launcher that said so; ``local_rank`` picks the CUDA device,
    ``local_size`` is torchrun's ``LOCAL_WORLD_SIZE``, ``cpus`` Slurm's ``--cpus-per-task``."""

    index: int = 0
    count: int = 1
    source: str = "default"
    local_rank: int | None = None
    cpus: int | None = None
    local_size: int | None = None

    @property
    def shard(self) -> tuple[int, int]:
        """``(index, count)``, as the file's ``shard`` attribute records it."""
        return self.index, self.count

    def cpu_budget(self, available: int) -> int:
        """Slurm's grant (or ``available``: the CPU affinity) split among local peers, capped at
        ``available``: more threads than allowed cores would only wait for each other."""
        total = min(self.cpus, available) if self.cpus else available
        return max(1, total // max(1, self.local_size or 1))


MAX_SHARD_DIGITS = 12  # {shard:05d} pads; a spec like {shard:>400} would only make an unusable name


def shard_output_path(output: str, index: int, count: int) -> str:
    """``feats.h5`` -> ``feats.shard-00003-of-00008.h5`` when ``count > 1`` (only the file name changes;
    ``.h5`` added where it has no extension); ``{shard}``/``{num_shards}`` fill in (docs/cluster.md)."""
    fields = list(re.finditer(r"\{(shard|num_shards)(?::([^{}]*))?\}", output))  # -o names the shard itself
    if fields:
        if count > 1 and all(m.group(1) != "shard" for m in fields):
            raise UsageError(f"-o {output!r} names no {{shard}}: all {count} shards would write the same file")
        for m in fields:
            spec = m.group(2) or ""
            digits = re.fullmatch(r"(?:0(\d{1,2}))?d?", spec)  # "", "d", "05", "05d": no spaces, no 400-wide pads
            if digits is None or int(digits.group(1) or 0) > MAX_SHARD_DIGITS:
                raise UsageError(
                    f"-o: only {{shard}} and {{num_shards}} may be filled in, as numbers with at most "
                    f"{MAX_SHARD_DIGITS} digits of zero padding such as {{shard:05d}}; not {m.group(0)[:40]}"
                )
        try:
            return output.format(shard=index, num_shards=count)
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(
                f"-o {output!r}: only {{shard}} and {{num_shards}} may be filled in, e.g. "
                f"feats-{{shard:03d}}.h5 ({exc.__class__.__name__}: {exc})"
            ) from None
    if count == 1:
        return output
    folder, name = os.path.split(output)
    stem, ext = os.path.splitext(name)
    renamed = f"{stem}.shard-{index:05d}-of-{count:05d}{ext or '.h5'}"
    return os.path.join(folder, renamed) if folder else renamed


def _int(env: Mapping[str, str], name: str, positive: bool = False) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    if not re.fullmatch(r"\s*-?\d+\s*", raw):
        raise UsageError(f"environment variable {name}={raw!r} is not a whole number")
    if positive and int(raw) < 1:
        raise UsageError(f"environment variable {name}={int(raw)} must be at least 1")
    return int(raw)


def _slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    """``(index, count)`` from a Slurm job array's variables, or None outside an array."""
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    step = _int(env, "SLURM_ARRAY_TASK_STEP")
    if step is not None and step != 1:
        raise UsageError(
            f"Slurm array step is {step} (SLURM_ARRAY_TASK_STEP): featdump needs contiguous task ids "
            "such as --array=0-7 or --array=1-8, or pass --shard I/N yourself"
        )
    first = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
    last = _int(env, "SLURM_ARRAY_TASK_MAX")
    count = _int(env, "SLURM_ARRAY_TASK_COUNT")
    if count is None:
        if last is None:
            raise UsageError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
        count = last - first + 1
    if last is not None and last - first + 1 != count:
        raise UsageError(
            f"Slurm array ids {first}..{last} hold {count} tasks, not {last - first + 1}: featdump needs "
            "contiguous task ids such as --array=0-7 or --array=1-8 (not a list like 1,3,5), or pass --shard I/N"
        )
    index = task - first
    if count < 1 or not 0 <= index < count:
        raise UsageError(
            f"Slurm array task {task} is outside {first}..{first + count - 1}; "
            "featdump needs contiguous task ids (e.g. --array=0-7), or pass --shard I/N"
        )
    return index, count


def placement_from_env(env: Mapping[str, str] | None = None, shard: tuple[int, int] | None = None) -> Placement:
    """This process's shard: ``shard`` (``--shard I/N``) if given, else torchrun, else a Slurm array
    (the rules: docs/cluster.md). With ``shard`` given, the launcher's GPU and CPU hints
    (``LOCAL_RANK``, ``SLURM_CPUS_PER_TASK``) still count, and its array variables are not checked."""
    env = os.environ if env is None else env
    cpus = _int(env, "SLURM_CPUS_PER_TASK", positive=True)
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    torchrun = rank is not None and world is not None
    local_rank = _int(env, "LOCAL_RANK") if torchrun else None
    local_size = _int(env, "LOCAL_WORLD_SIZE", positive=True) if torchrun else None
    if shard is not None:
        return Placement(shard[0], shard[1], "--shard", local_rank, cpus, local_size)
    if rank is not None and world is not None:
        if world < 1 or not 0 <= rank < world:
            raise UsageError(f"RANK={rank} WORLD_SIZE={world} is not a valid torchrun placement")
        return Placement(rank, world, "torchrun", local_rank, cpus, local_size)
    array = _slurm_array(env)
    if array is not None:
        return Placement(array[0], array[1], "slurm", None, cpus)
    return Placement(0, 1, "default", None, cpus)
