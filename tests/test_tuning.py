"""Tuned defaults per device: workers, threads, batch size and channels_last follow the CPU budget
(Slurm's included); flags win over tuning. Nothing here times anything."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from featdump.options import ExtractConfig
from featdump.run.placement import Placement


def _cfg(**kw: Any) -> ExtractConfig:
    return ExtractConfig(model="resnet50", inputs=("x",), output="o.h5", **kw)


def _dev(kind: str) -> Any:
    return SimpleNamespace(type=kind)


# --------------------------------------------------------------------------- tuned defaults


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 1, 7), (16, 2, 14), (64, 8, 56), (256, 8, 248)],
)
def test_cpu_defaults_follow_the_cpu_budget(
    cpus: int, workers: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("featdump.run.device.os.sched_getaffinity", lambda pid: set(range(512)), raising=False)
    from featdump.run.device import CPU_BATCH, tune

    t = tune(_dev("cpu"), _cfg(), Placement(cpus=cpus))
    assert (t.workers, t.threads, t.batch_size, t.channels_last) == (workers, threads, CPU_BATCH, True)
    assert t.decode_nice == (19 if cpus <= 4 else 0)  # decode threads share the forward's cores up to 4


def test_cpu_budget_comes_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from featdump.run.device import cpu_budget, tune
    from featdump.run.placement import placement_from_env

    monkeypatch.setattr("featdump.run.device.os.sched_getaffinity", lambda pid: set(range(512)), raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    placement = placement_from_env()
    assert cpu_budget(placement) == 3
    assert tune(_dev("cpu"), _cfg(), placement).threads == 3


def test_flags_win_over_tuning() -> None:
    from featdump.run.device import tune

    t = tune(_dev("cpu"), _cfg(batch_size=3, workers=0), Placement(cpus=16))
    assert (t.batch_size, t.workers) == (3, 0)


def test_cuda_defaults() -> None:
    from featdump.run.device import tune

    t = tune(_dev("cuda"), _cfg(), Placement(cpus=16))
    assert (t.batch_size, t.threads, t.channels_last) == (64, None, True)
    assert 1 <= t.workers <= 8
    assert tune(_dev("cuda"), _cfg(decode="gpu"), Placement(cpus=16)).workers <= 4


def test_a_resumed_run_keeps_its_files_batch_size() -> None:
    from featdump.run.device import tune

    first = {"batch_size": 4, "device": "cpu"}  # what run/facts.py read from the file
    assert tune(_dev("cpu"), _cfg(), Placement(cpus=2), first).batch_size == 4
    assert tune(_dev("cpu"), _cfg(batch_size=3), Placement(cpus=2), first).batch_size == 3  # a flag wins
    assert tune(_dev("cuda"), _cfg(), Placement(cpus=2), first).batch_size == 64  # another device: its default
    assert tune(_dev("cuda"), _cfg(), Placement(cpus=2), {"batch_size": 32, "device": "cuda:1"}).batch_size == 32


def test_the_cpu_batch_follows_the_size_of_the_weights_and_the_input() -> None:
    import torch

    from featdump.run.device import CPU_BATCH, LARGE_WEIGHTS, SMALL_INPUT, tune

    width = LARGE_WEIGHTS // 4 // 1024  # float32 weights of a Linear(1024, width): LARGE_WEIGHTS bytes

    def built(n: int, side: int = 224) -> Any:
        return SimpleNamespace(model=torch.nn.Linear(1024, n, bias=False, device="meta"), data=SimpleNamespace(input_size=(3, side, side), size_mode=None))

    at, over = built(width), built(width + 1)
    assert tune(_dev("cpu"), _cfg(), Placement(cpus=2), backbone=at).batch_size == CPU_BATCH
    assert tune(_dev("cpu"), _cfg(), Placement(cpus=2), backbone=over).batch_size == 2 * CPU_BATCH
    large = built(width + 1, int(SMALL_INPUT**0.5) + 1)  # a larger input (a size mode, tiles): the activations' memory
    assert tune(_dev("cpu"), _cfg(), Placement(cpus=2), backbone=large).batch_size == CPU_BATCH
    assert tune(_dev("cpu"), _cfg(batch_size=3), Placement(cpus=2), backbone=over).batch_size == 3  # a flag wins
    first = {"batch_size": CPU_BATCH, "device": "cpu"}  # a file made at 8 is resumed at 8: the same rows
    assert tune(_dev("cpu"), _cfg(), Placement(cpus=2), first, backbone=over).batch_size == CPU_BATCH
    assert tune(_dev("cuda"), _cfg(), Placement(cpus=2), backbone=over).batch_size == 64
