"""bench/gpu_check.sh stays runnable where no GPU is: its syntax, and a dry run on the CPU
(GPU_CHECK_DEVICE=cpu, a few images) that prints the table. The GPU numbers are measured only on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_dry_run_on_cpu(tmp_path: Path) -> None:
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", GPU_CHECK_IMAGES="16", GPU_CHECK_BATCH="8",
               GPU_CHECK_DIR=str(tmp_path), PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| bare forward (pre-decoded tensors) |" in proc.stdout
    assert "| featdump, CPU decoding |" in proc.stdout and "| featdump, --decode gpu | skipped |" in proc.stdout
