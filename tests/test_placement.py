"""Shard arithmetic and launcher placement, by tables; then the same placements through a real extract."""

from __future__ import annotations

from pathlib import Path

import pytest

from featdump.data.sources import shard_bounds
from featdump.errors import UsageError
from featdump.run.placement import Placement, placement_from_env, shard_output_path

# --------------------------------------------------------------------------- shard_bounds


@pytest.mark.parametrize(
    ("num_items", "count", "blocks"),
    [
        (9, 3, [(0, 3), (3, 6), (6, 9)]),  # even
        (10, 3, [(0, 4), (4, 7), (7, 10)]),  # uneven: the first blocks get one more
        (7, 3, [(0, 3), (3, 5), (5, 7)]),
        (8, 5, [(0, 2), (2, 4), (4, 6), (6, 7), (7, 8)]),
        (2, 5, [(0, 1), (1, 2), (2, 2), (2, 2), (2, 2)]),  # more shards than items: empty tails
        (0, 3, [(0, 0), (0, 0), (0, 0)]),  # nothing at all
        (5, 1, [(0, 5)]),  # N = 1 is the whole list
        (1, 1, [(0, 1)]),
        (1000003, 8, [(i * 125000 + min(i, 3), (i + 1) * 125000 + min(i + 1, 3)) for i in range(8)]),
    ],
)
def test_shard_bounds_table(num_items: int, count: int, blocks: list[tuple[int, int]]) -> None:
    assert [shard_bounds(num_items, i, count) for i in range(count)] == blocks


def test_shard_bounds_cover_every_item_once_in_order() -> None:
    for num_items in range(0, 40):
        for count in range(1, 13):
            blocks = [shard_bounds(num_items, i, count) for i in range(count)]
            assert [i for start, stop in blocks for i in range(start, stop)] == list(range(num_items))
            sizes = [stop - start for start, stop in blocks]
            assert max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("num_items", "index", "count"), [(5, 3, 3), (5, -1, 3), (5, 0, 0), (-1, 0, 1)])
def test_shard_bounds_rejects_impossible_blocks(num_items: int, index: int, count: int) -> None:
    with pytest.raises(ValueError):
        shard_bounds(num_items, index, count)


# --------------------------------------------------------------------------- output names


@pytest.mark.parametrize(
    ("output", "index", "count", "expected"),
    [
        ("feats.h5", 3, 8, "feats.shard-00003-of-00008.h5"),
        ("feats.h5", 0, 1, "feats.h5"),  # N = 1: the name as given
        ("out/feats.h5", 1, 2, "out/feats.shard-00001-of-00002.h5"),
        ("/abs/run.v2/feats.hdf5", 0, 2, "/abs/run.v2/feats.shard-00000-of-00002.hdf5"),
        ("out.d/feats", 1, 2, "out.d/feats.shard-00001-of-00002.h5"),  # a dot in the folder is not an extension
        ("feats.tar.h5", 0, 3, "feats.tar.shard-00000-of-00003.h5"),
        ("run-{shard:03d}-of-{num_shards}.h5", 2, 4, "run-002-of-4.h5"),
        ("run-{shard}.h5", 0, 1, "run-0.h5"),
        ("{num_shards}/part-{shard}.h5", 5, 16, "16/part-5.h5"),
        ("run-{shard}-of-{num_shards}.h5", 99999, 100000, "run-99999-of-100000.h5"),
        ("odd{x}.h5", 0, 2, "odd{x}.shard-00000-of-00002.h5"),  # other braces are not a template
    ],
)
def test_shard_output_path_table(output: str, index: int, count: int, expected: str) -> None:
    assert shard_output_path(output, index, count) == expected


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("all-{num_shards}.h5", "names no {shard}: all 2 shards would write the same file"),
        ("run-{shard}-{other}.h5", "only {shard} and {num_shards} may be filled in"),
        ("run-{shard:q}.h5", "only {shard} and {num_shards} may be filled in"),
    ],
)
def test_shard_output_path_refuses_bad_templates(output: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("{", r"\{").replace("}", r"\}")):
        shard_output_path(output, 0, 2)


# --------------------------------------------------------------------------- environment

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


def array(task: int, first: int, last: int, count: int | None = None, step: int = 1) -> dict[str, str]:
    """The variables Slurm 22.05 sets in an array task (checked against a real sbatch in test_slurm)."""
    env = {
        "SLURM_ARRAY_JOB_ID": "17",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(first),
        "SLURM_ARRAY_TASK_MAX": str(last),
        "SLURM_ARRAY_TASK_STEP": str(step),
        "SLURM_ARRAY_TASK_COUNT": str(count if count is not None else (last - first) // step + 1),
    }
    return env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Placement(0, 1, "default")),
        ({"SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "6"}, Placement(0, 1, "default", cpus=6)),  # not an array
        (TORCHRUN, Placement(3, 4, "torchrun", local_rank=1, local_size=2)),
        ({"RANK": "0", "WORLD_SIZE": "1"}, Placement(0, 1, "torchrun")),
        ({"RANK": "0"}, Placement(0, 1, "default")),  # half a torchrun placement is not one
        ({**TORCHRUN, **array(0, 0, 7)}, Placement(3, 4, "torchrun", local_rank=1, local_size=2)),  # torchrun wins
        (array(3, 0, 7), Placement(3, 8, "slurm")),  # --array=0-7
        (array(1, 1, 8), Placement(0, 8, "slurm")),  # --array=1-8: offset by SLURM_ARRAY_TASK_MIN
        (array(8, 1, 8), Placement(7, 8, "slurm")),
        (array(2, 1, 3), Placement(1, 3, "slurm")),  # --array=1-3
        (array(0, 0, 0), Placement(0, 1, "slurm")),  # a one-task array
        ({**array(5, 5, 9), "SLURM_ARRAY_TASK_COUNT": ""}, Placement(0, 5, "slurm")),  # count from MIN..MAX
        ({**array(2, 0, 3), "SLURM_CPUS_PER_TASK": "16"}, Placement(2, 4, "slurm", cpus=16)),
        ({**TORCHRUN, "SLURM_CPUS_PER_TASK": "8"}, Placement(3, 4, "torchrun", 1, 8, 2)),
    ],
)
def test_placement_from_env_table(env: dict[str, str], expected: Placement) -> None:
    assert placement_from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (array(4, 0, 12, step=4), "Slurm array step is 4"),  # --array=0-15:4
        (array(3, 1, 4, count=3), "not a list like 1,3,5"),  # --array=1,3,4
        ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT is not"),
        ({**array(9, 0, 7), "SLURM_ARRAY_TASK_MAX": ""}, "task 9 is outside 0..7"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK=4 WORLD_SIZE=4 is not a valid torchrun placement"),
        ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not a whole number"),
        ({"SLURM_CPUS_PER_TASK": "0"}, "SLURM_CPUS_PER_TASK=0 must be at least 1"),
        ({"SLURM_CPUS_PER_TASK": "4(x2)"}, "SLURM_CPUS_PER_TASK='4(x2)' is not a whole number"),
    ],
)
def test_placement_from_env_refuses(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        placement_from_env(env)


def test_explicit_shard_wins_and_keeps_the_launchers_hints() -> None:
    stepped = {**array(4, 0, 12, step=4), "SLURM_CPUS_PER_TASK": "3"}
    assert placement_from_env(stepped, shard=(1, 5)) == Placement(1, 5, "--shard", cpus=3)
    assert placement_from_env(TORCHRUN, shard=(0, 2)) == Placement(0, 2, "--shard", 1, None, 2)


@pytest.mark.parametrize(
    ("placement", "available", "budget"),
    [
        (Placement(), 2, 2),
        (Placement(cpus=6), 64, 6),  # Slurm's --cpus-per-task, not the whole node
        (Placement(3, 4, "torchrun", 1, None, 2), 16, 8),  # local copies share the node
        (Placement(3, 4, "torchrun", 1, 8, 4), 64, 2),
        (Placement(3, 4, "torchrun", 1, None, 4), 2, 1),  # never below one
    ],
)
def test_cpu_budget_table(placement: Placement, available: int, budget: int) -> None:
    assert placement.cpu_budget(available) == budget


def test_slurm_cpus_per_task_sets_threads_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr("featdump.run.device.os.sched_getaffinity", lambda pid: set(range(512)), raising=False)

    from featdump.options import ExtractConfig
    from featdump.run.device import cpu_budget, tune

    cfg = ExtractConfig(model="resnet18", inputs=("x",), output="o.h5")
    assert cpu_budget(placement_from_env({"SLURM_CPUS_PER_TASK": "12"})) == 12
    assert cpu_budget(placement_from_env({**TORCHRUN, "SLURM_CPUS_PER_TASK": "12"})) == 6
    many = tune(torch.device("cpu"), cfg, placement_from_env({"SLURM_CPUS_PER_TASK": "12"}))
    assert 6 <= many.threads <= 12 and 1 <= many.workers <= 12
    one = tune(torch.device("cpu"), cfg, placement_from_env({"SLURM_CPUS_PER_TASK": "1"}))
    assert one.threads == 1 and one.workers <= 1
    gpu = tune(torch.device("cuda"), cfg, placement_from_env({"SLURM_CPUS_PER_TASK": "3"}))
    assert 1 <= gpu.workers <= 3


# --------------------------------------------------------------------------- through a real extract


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clusterkit import make_images

    return make_images(tmp_path_factory.mktemp("shard-images"), 5)


def _extract(cli, images: Path, out: Path, ckpt: Path, *extra: str):
    from clusterkit import FAST

    return cli("extract", "resnet18", str(images), "-o", str(out), "--checkpoint", str(ckpt), *FAST, *extra)


def _attrs(path: Path) -> dict:
    import h5py

    from featdump.store.format import read_attr

    with h5py.File(path, "r") as h5:
        return {k: read_attr(v) for k, v in h5.attrs.items()}


@pytest.mark.parametrize(
    ("env", "name", "shard", "rows"),
    [
        (array(2, 1, 3), "feats.shard-00001-of-00003.h5", [1, 3], 2),  # --array=1-3, task 2
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "feats.shard-00001-of-00002.h5", [1, 2], 2),
    ],
)
def test_extract_takes_its_shard_from_the_environment(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, images: Path, random_checkpoint, env, name, shard, rows
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = _extract(cli, images, tmp_path / "feats.h5", random_checkpoint("resnet18"))
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [name]
    attrs = _attrs(tmp_path / name)
    assert attrs["shard"] == shard
    assert (attrs["num_images"], attrs["num_inputs"], attrs["list_size"]) == (rows, rows, 5)
    assert attrs["complete"] is True


def test_extract_refuses_a_stepped_array(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, images: Path) -> None:
    for key, value in array(4, 0, 12, step=4).items():
        monkeypatch.setenv(key, value)
    result = cli("extract", "resnet18", str(images), "-o", str(tmp_path / "f.h5"), "--no-pretrained")
    assert result.exit_code == 2
    assert "Slurm array step is 4" in result.output and "--shard I/N" in result.output
    assert list(tmp_path.iterdir()) == []


def test_template_output_and_more_shards_than_images(cli, tmp_path: Path, images: Path, random_checkpoint) -> None:
    out = tmp_path / "part-{shard:02d}-of-{num_shards}.h5"
    result = _extract(cli, images, out, random_checkpoint("resnet18"), "--shard", "6/7")
    assert result.exit_code == 0, result.output
    attrs = _attrs(tmp_path / "part-06-of-7.h5")
    assert attrs["shard"] == [6, 7]
    assert (attrs["num_images"], attrs["num_inputs"], attrs["complete"]) == (0, 0, True)  # an empty block
