"""Real Slurm: the repository's job scripts on a private one-node cluster (.ci/slurm-up.sh).

configs/slurm/extract-array.sbatch runs as a 3-task array twice (--array=0-2 and --array=1-3), each
followed by configs/slurm/merge.sbatch with --dependency=afterok; both merged files must equal a
single run. One shard is left unfinished before its array is submitted, as a killed and requeued
task leaves it: the task must continue it. A stepped array (0-4:4) must be refused by every task.
A third 3-task array reads 6 WebDataset tar shards (a brace pattern): task I opens tars 2I and 2I+1
only, and the merged file equals a single run over the 6 shards, ids and failures included.

Needs root and Debian's slurm-wlm + munge (installed with apt-get by `.ci/slurm-up.sh install`,
which .ci/run calls first). Elsewhere the test skips and says why; with CI=true it fails instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from streamkit import hand_tar

from clusterkit import assert_rows_of_shards, assert_same_as_single, make_images, read

ROOT = Path(__file__).resolve().parents[2]  # the repository
SLURM_UP = ROOT / ".ci" / "slurm-up.sh"
EXTRACT = ROOT / "configs" / "slurm" / "extract-array.sbatch"
MERGE = ROOT / "configs" / "slurm" / "merge.sbatch"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
ARGS = ("--img-size", "64", "--workers", "0", "--batch-size", "3")  # device auto: CPU here, the GPU on a cluster
WAIT_S = 240
TARS = "shards/s-{000000..000005}.tar"  # relative: read from the job's working folder
TAR_SAMPLES = (3, 2, 4, 3, 3, 2)  # samples per tar shard
BROKEN_TAR_SAMPLE = (3, 1)  # (shard, sample): bytes that are not a JPEG

pytestmark = pytest.mark.slow


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the Slurm test must run in CI (CI=true), but {reason}")
    pytest.skip(reason)


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env, cwd=cwd, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{self.logs()}")
        return proc.stdout

    def sbatch(self, *args: str, cwd: Path) -> str:
        return self.run("sbatch", "--parsable", *args, cwd=cwd).strip().split(";")[0]

    def logs(self, *folders: Path) -> str:
        parts = []
        for folder in (*folders, self.folder / "log"):
            for log in sorted(folder.glob("*.log")):
                parts.append(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not sys.platform.startswith("linux"):
        unavailable("Slurm runs on Linux only")
    missing = [c for c in COMMANDS if not shutil.which(c, path=SEARCH)]
    if missing:
        if os.geteuid() != 0:
            unavailable(f"Slurm is not installed ({', '.join(missing)} missing) and installing it needs root")
        if not shutil.which("apt-get"):
            unavailable(f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get here")
        proc = subprocess.run(["bash", str(SLURM_UP), "install"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            unavailable(f"apt-get could not install slurm-wlm and munge: {proc.stderr.strip()[-300:]}")
    if os.geteuid() != 0:
        unavailable("the test cluster runs munged, slurmctld and slurmd as root")
    folder = tmp_path_factory.mktemp("slurm")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))}
    env["PATH"] = SEARCH
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SLURM_UP), "start", str(folder)], capture_output=True, text=True, env=env, timeout=120
    )
    try:
        assert proc.returncode == 0, f"cluster did not start:\n{proc.stdout}\n{proc.stderr}"
        conf = re.search(r"^SLURM_CONF=(.+)$", proc.stdout, re.M)
        assert conf, proc.stdout
        env["SLURM_CONF"] = conf.group(1)
        print(f"slurm: cluster up in {time.monotonic() - started:.1f} s")
        yield Cluster(folder, env)
    finally:
        subprocess.run(["bash", str(SLURM_UP), "stop", str(folder)], env=env, timeout=60)


def wait(cluster: Cluster, jobs: list[str], folders: list[Path]) -> dict[str, list[tuple[str, str]]]:
    """Poll squeue until none of ``jobs`` is pending or running; then every task's (state, exit code)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        queue = cluster.run("squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T %r", check=False)
        waiting = [line for line in queue.splitlines() if "DependencyNeverSatisfied" not in line]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs still queued after {WAIT_S} s:\n{queue}\n{cluster.logs(*folders)}")
        time.sleep(0.5)
    states: dict[str, list[tuple[str, str]]] = {}
    for job in jobs:
        out = cluster.run("scontrol", "-o", "show", "job", job)
        states[job] = [
            (re.search(r"JobState=(\S+)", line).group(1), re.search(r" ExitCode=(\S+)", line).group(1))  # type: ignore[union-attr]
            for line in out.splitlines()
            if line.strip()
        ]
    return states


def write_tars(folder: Path) -> None:
    """Six WebDataset shards ``folder/shards/s-00000K.tar`` of tiny JPEGs (``KEY.jpg`` + ``KEY.cls``)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    (folder / "shards").mkdir(parents=True)
    for k, count in enumerate(TAR_SAMPLES):
        members = []
        for j in range(count):
            buf = io.BytesIO()
            pixels = rng.integers(0, 256, (30 + 2 * j, 44 - 3 * k, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            data = b"not a JPEG" if (k, j) == BROKEN_TAR_SAMPLE else buf.getvalue()
            members += [(f"s{k}_{j:03d}.jpg", data), (f"s{k}_{j:03d}.cls", str(j).encode())]
        hand_tar(folder / "shards" / f"s-{k:06d}.tar", members)


@pytest.fixture(scope="module")
def jobs(slurm: Cluster, tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> dict[str, Any]:
    """Submit every case at once (they run side by side) and wait for all of them."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    base = tmp_path_factory.mktemp("slurm-jobs")
    images = make_images(base / "images", 8, broken=(5,))
    ckpt = str(random_checkpoint("resnet18"))
    args = ("--checkpoint", ckpt, *ARGS)
    single = base / "single.h5"
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "resnet18", str(images), "-o", str(single), *args, "--shard", "0/1", "--quiet"])
    assert result.exit_code == 0, result.output

    cases = {name: base / name for name in ("zero", "one", "stepped", "tar")}
    for folder in cases.values():
        folder.mkdir()
    # tar shards: the single run in the same folder, so that both store the same relative paths
    write_tars(cases["tar"])
    tar_args = ("--no-pretrained", *ARGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "featdump", "extract", "resnet18", TARS, "-o", "single.h5", *tar_args, "--quiet"],
        capture_output=True, text=True, cwd=cases["tar"], env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # shard 1 of the first array: started, then killed after its first commit (rows past it don't count)
    unfinished = cases["zero"] / "feats.shard-00001-of-00003.h5"
    result = runner.invoke(
        app, ["extract", "resnet18", str(images), "-o", str(cases["zero"] / "feats.h5"), *args, "--shard", "1/3", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(unfinished, "r+") as h5:
        h5.attrs["complete"] = False
        h5.attrs["num_images"] = 1
        h5.attrs["inputs_done"] = 1

    slurm.env["FEATDUMP"] = str(BIN / "featdump")
    slurm.env.setdefault("HF_HUB_OFFLINE", "1")
    common = ("--cpus-per-task=1", str(EXTRACT), "resnet18", str(images))
    started = time.monotonic()
    ids = {
        "zero": slurm.sbatch("--array=0-2", *common, str(cases["zero"] / "feats.h5"), *args, cwd=cases["zero"]),
        "one": slurm.sbatch("--array=1-3", *common, str(cases["one"] / "feats.h5"), *args, cwd=cases["one"]),
        "stepped": slurm.sbatch("--array=0-4:4", *common, str(cases["stepped"] / "feats.h5"), *args, cwd=cases["stepped"]),
        "tar": slurm.sbatch(
            "--array=0-2", "--cpus-per-task=1", str(EXTRACT), "resnet18", TARS, "out.h5", *tar_args, cwd=cases["tar"]
        ),
    }
    ids["tar-merge"] = slurm.sbatch(f"--dependency=afterok:{ids['tar']}", str(MERGE), "out.h5", cwd=cases["tar"])
    ids["zero-merge"] = slurm.sbatch(
        f"--dependency=afterok:{ids['zero']}", str(MERGE), str(cases["zero"] / "feats.h5"), cwd=cases["zero"]
    )
    ids["one-merge"] = slurm.sbatch(
        f"--dependency=afterok:{ids['one']}", str(MERGE), str(cases["one"] / "feats.h5"), "--copy", cwd=cases["one"]
    )
    states = wait(slurm, list(ids.values()), list(cases.values()))
    seconds = time.monotonic() - started
    print(f"slurm: 4 arrays (11 tasks) + 3 dependent merges done in {seconds:.1f} s")
    return {"ids": ids, "states": states, "cases": cases, "single": single, "cluster": slurm}


def _logs(jobs: dict[str, Any], case: str) -> str:
    return jobs["cluster"].logs(jobs["cases"][case])


def _shards(folder: Path) -> list[Path]:
    return [folder / f"feats.shard-0000{i}-of-00003.h5" for i in range(3)]


@pytest.mark.parametrize("case", ["zero", "one"])
def test_array_and_dependent_merge_equal_a_single_run(jobs: dict[str, Any], case: str) -> None:
    ids, states, folder = jobs["ids"], jobs["states"], jobs["cases"][case]
    assert states[ids[case]] == [("COMPLETED", "0:0")] * 3, _logs(jobs, case)
    assert states[ids[f"{case}-merge"]] == [("COMPLETED", "0:0")], _logs(jobs, case)
    shards = _shards(folder)
    for i, shard in enumerate(shards):
        attrs = read(shard)["attrs"]
        assert attrs["shard"] == [i, 3] and attrs["complete"] is True
    merged = folder / "feats.h5"
    assert read(merged)["attrs"]["merge"] == ("virtual" if case == "zero" else "copy")
    assert_same_as_single(merged, jobs["single"])
    assert_rows_of_shards(merged, shards)


def test_array_over_tar_shards_each_task_reads_its_own_tars(jobs: dict[str, Any]) -> None:
    ids, states, folder = jobs["ids"], jobs["states"], jobs["cases"]["tar"]
    assert states[ids["tar"]] == [("COMPLETED", "0:0")] * 3, _logs(jobs, "tar")
    assert states[ids["tar-merge"]] == [("COMPLETED", "0:0")], _logs(jobs, "tar")
    shards = [folder / f"out.shard-0000{i}-of-00003.h5" for i in range(3)]
    for i, shard in enumerate(shards):
        part = read(shard)
        assert part["attrs"]["shard"] == [i, 3] and part["attrs"]["complete"] is True
        assert part["attrs"]["num_inputs"] == 2  # tar files, not samples
        rows = part["paths"] + part["failed"]
        tars = {re.fullmatch(r"shards/s-(\d{6})\.tar/s\d_\d{3}\.jpg", p).group(1) for p in rows}  # type: ignore[union-attr]
        assert tars == {f"{2 * i:06d}", f"{2 * i + 1:06d}"}, rows  # only its own two tars, both of them
        assert len(rows) == TAR_SAMPLES[2 * i] + TAR_SAMPLES[2 * i + 1]
    merged, single = folder / "out.h5", folder / "single.h5"
    want = read(single)
    assert len(want["paths"]) == sum(TAR_SAMPLES) - 1 and len(want["failed"]) == 1
    assert want["ids"] == [p.split("/")[-1].removesuffix(".jpg") for p in want["paths"]]
    assert want["failed_ids"] == ["s{}_{:03d}".format(*BROKEN_TAR_SAMPLE)]
    assert_same_as_single(merged, single)
    assert_rows_of_shards(merged, shards)


def test_requeued_task_continues_its_shard(jobs: dict[str, Any]) -> None:
    logs = {log.name.rsplit("_", 1)[1]: log.read_text() for log in jobs["cases"]["zero"].glob("featdump-*_*.log")}
    assert sorted(logs) == ["0.log", "1.log", "2.log"], _logs(jobs, "zero")
    assert "resumed after 1" in logs["1.log"], logs["1.log"]  # the unfinished shard went on from its commit
    assert "resumed after" not in logs["0.log"] + logs["2.log"]


def test_array_may_start_at_one(jobs: dict[str, Any]) -> None:
    logs = {log.name.rsplit("_", 1)[1]: log.read_text() for log in jobs["cases"]["one"].glob("featdump-*_*.log")}
    assert sorted(logs) == ["1.log", "2.log", "3.log"], _logs(jobs, "one")
    for task, text in logs.items():
        assert f"featdump: array task {task[0]} of 1-3 on " in text, text


def test_stepped_array_is_refused_by_every_task(jobs: dict[str, Any]) -> None:
    assert jobs["states"][jobs["ids"]["stepped"]] == [("FAILED", "2:0")] * 2, _logs(jobs, "stepped")
    for log in jobs["cases"]["stepped"].glob("featdump-*_*.log"):
        assert "Slurm array step is 4 (SLURM_ARRAY_TASK_STEP)" in log.read_text()
    assert not list(jobs["cases"]["stepped"].glob("*.h5"))


def test_job_scripts_parse_and_are_the_ones_the_docs_show() -> None:
    section = (ROOT / "docs" / "cluster.md").read_text()
    torchrun = ROOT / "configs" / "torchrun" / "extract-node.sh"
    for script in (EXTRACT, MERGE, torchrun, SLURM_UP):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        assert os.access(script, os.X_OK), script
    for script in (EXTRACT, MERGE, torchrun):
        assert str(script.relative_to(ROOT)) in section
    assert "sbatch --parsable --array=0-7 configs/slurm/extract-array.sbatch" in section
    assert "sbatch --dependency=afterok:$jid configs/slurm/merge.sbatch" in section


def test_extract_script_outside_an_array_says_how_to_submit_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(EXTRACT), "resnet18", str(tmp_path), str(tmp_path / "f.h5")],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2
    assert "submit it as a job array, e.g. sbatch --array=0-7" in proc.stderr
