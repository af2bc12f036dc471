"""The free-space check before a run: refused before the model loads (a real 2 MiB tmpfs), with what
to do; --no-space-check skips it; pooled vectors that fit run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import run


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_space_check_refuses_before_the_model(tiny_fs, imgs, tmp_path):
    missing = tmp_path / "no-such.safetensors"  # the model would fail to load: proves it never does
    p = run("extract", "resnet18", str(imgs), "-o", str(tiny_fs / "f.h5"), "--checkpoint", str(missing))
    assert p.returncode == 2, p.stderr
    assert "not enough space" in p.stderr and "--dtype float16" in p.stderr and "--no-space-check" in p.stderr
    assert "MiB" in p.stderr and str(tiny_fs) in p.stderr
    p = run("extract", "resnet18", str(imgs), "-o", str(tiny_fs / "f.h5"), "--checkpoint", str(missing), "--no-space-check")
    assert p.returncode == 2 and "not enough space" not in p.stderr and "no-such" in p.stderr
    p = run("extract", "resnet18", str(imgs), "-o", str(tiny_fs / "f.h5"), "--no-pretrained", "--pool", "avg", "-q")
    assert p.returncode == 0, p.stderr  # pooled vectors fit
