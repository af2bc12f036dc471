"""torchrun on one node: `torchrun --standalone --nproc_per_node=2 -m featdump extract ...` on CPU.

Runs the repository's example, configs/torchrun/extract-node.sh, which starts the two processes,
then merges their shards; the result must equal a single run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clusterkit import FAST, assert_rows_of_shards, assert_same_as_single, make_images, read

ROOT = Path(__file__).resolve().parents[2]  # the repository
SCRIPT = ROOT / "configs" / "torchrun" / "extract-node.sh"
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_torchrun_two_processes_write_two_shards_that_merge_to_a_single_run(
    tmp_path: Path, cli: Any, random_checkpoint: Any
) -> None:
    torchrun = BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun next to {sys.executable}")
    images = make_images(tmp_path / "images", 7, broken=(3,))
    ckpt = str(random_checkpoint("resnet18"))
    args = ["--checkpoint", ckpt, *FAST]
    single = tmp_path / "single.h5"
    assert cli("extract", "resnet18", str(images), "-o", str(single), *args).exit_code == 0

    out = tmp_path / "out" / "feats.h5"
    env = dict(os.environ, NPROC="2", TORCHRUN=str(torchrun), FEATDUMP=str(BIN / "featdump"))
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "resnet18", str(images), str(out), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"torchrun: 2 processes + merge in {seconds:.1f} s")

    shards = [tmp_path / "out" / f"feats.shard-0000{i}-of-00002.h5" for i in range(2)]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["feats.h5", *(p.name for p in shards)])
    for rank, shard in enumerate(shards):
        attrs = read(shard)["attrs"]
        assert attrs["shard"] == [rank, 2] and attrs["complete"] is True
        assert attrs["list_digest"] == read(single)["attrs"]["list_digest"]
    assert "from 2 shards" in proc.stdout
    assert_same_as_single(out, single)
    assert_rows_of_shards(out, shards)
    copied = tmp_path / "copy.h5"
    assert cli("merge", *map(str, shards), "-o", str(copied), "--copy").exit_code == 0
    assert_same_as_single(copied, single)
