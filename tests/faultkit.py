"""Helpers for the "nothing lost" tests (resume, faults, signals, safety, disk): images, runs, rows.

Every run is a real ``featdump extract``; rows are read back with plain h5py and compared value
for value.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = "resnet18"
# timm knows no such model: a refusal that must come before the model loads says its own words, not "unknown model"
NO_MODEL = "no_such_model"
# Small and fast: 64 px input, batch of 4, every batch committed (FEATDUMP_COMMIT_SECONDS=0).
FAST = ("--img-size", "64", "--batch-size", "4", "--device", "cpu", "--quiet")
ENV = {"FEATDUMP_COMMIT_SECONDS": "0"}


def make_images(folder: Path, n: int, seed: int = 0, broken: tuple[int, ...] = ()) -> Path:
    """``n`` small PNGs of random pixels and sizes (24-48 px); indices in ``broken`` are not images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"{i // 50:02d}" / f"img{i:04d}.png"
        path.parent.mkdir(exist_ok=True)
        if i in broken:
            path.write_bytes(b"this is not a PNG" * (i % 3))
            continue
        h, w = int(rng.integers(24, 49)), int(rng.integers(24, 49))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return folder


def extract_argv(images: Path | str, out: Path | str, checkpoint: Path | str, *extra: str) -> list[str]:
    return ["extract", MODEL, str(images), "-o", str(out), "--checkpoint", str(checkpoint), *FAST, *extra]


def popen(argv: list[str], env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    """A real ``python -m featdump`` process in its own process group (so signals reach only it)."""
    full = dict(os.environ)
    full.update(ENV)
    full.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "featdump", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
        start_new_session=True,
        **kw,
    )


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = popen(argv, env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def journal_seq(out: Path) -> int:
    """Commits made so far by the run writing ``out`` (from its journal header); -1 before the first."""
    try:
        raw = Path(f"{out}-journal").read_bytes()[:16]
    except OSError:
        return -1
    if len(raw) < 16 or raw[:8] != b"FDJRNL01":
        return -1
    return struct.unpack("<Q", raw[8:16])[0]


def wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float = 240, step: float = 0.01) -> bool:
    """Poll until ``predicate()``; False when the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(step)
    raise AssertionError("timed out waiting for the run")


def kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def read_rows(path: Path | str) -> dict[str, Any]:
    """Everything a reader may trust: attrs, paths, failures and feature rows below ``num_images``."""
    import h5py

    with h5py.File(path, "r") as f:
        return _Rows(f).rows


def assert_prefix_of(part: dict[str, Any], full: dict[str, Any]) -> None:
    """A partial file holds exactly the first rows of the finished one."""
    n, m = part["num_images"], part["num_failed"]
    assert part["paths"] == full["paths"][:n]
    assert part["failed"] == full["failed"][:m]
    for name, rows in part["features"].items():
        assert np.array_equal(rows, full["features"][name][:n]), name


def assert_same_rows(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["complete"] and b["complete"]
    assert (a["num_images"], a["num_failed"], a["inputs_done"]) == (b["num_images"], b["num_failed"], b["inputs_done"])
    assert a["paths"] == b["paths"]
    assert a["failed"] == b["failed"]
    assert a["errors"] == b["errors"]
    assert list(a["features"]) == list(b["features"])
    for name in a["features"]:
        assert a["features"][name].shape == b["features"][name].shape, name
        assert np.array_equal(a["features"][name], b["features"][name]), name


def sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(out: Path) -> list[str]:
    """Files a finished run must not leave beside its output (journal, replacement)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name) and p.name != out.name)


def committed_rows(path: Path | str) -> dict[str, Any]:
    """What ``--resume`` will continue from: the last commit, read without changing a byte."""
    import h5py

    from featdump.store.journal import JournaledFile

    jf = JournaledFile.open(path)
    try:
        with h5py.File(jf.view(), "r") as f:
            return _Rows(f).rows
    finally:
        jf.release()


def pending_redo(path: Path | str) -> bool:
    """True when a kill fell inside a commit's apply step (microseconds): only --resume repairs that."""
    from featdump.store.journal import JournaledFile

    jf = JournaledFile.open(path)
    try:
        return jf.pending is not None
    finally:
        jf.release()


class _Rows:
    def __init__(self, f: Any) -> None:
        n = int(f.attrs["num_images"])
        m = int(f.attrs["num_failed"])
        self.rows = {
            "complete": bool(f.attrs["complete"]),
            "num_images": n,
            "num_failed": m,
            "inputs_done": int(f.attrs["inputs_done"]),
            "paths": [p.decode() for p in f["paths"][:n]],
            "failed": [p.decode() for p in f["failed/paths"][:m]],
            "errors": [e.decode() for e in f["failed/errors"][:m]],
            "features": {k: f["features"][k][:n] for k in f["features"]},
        }


class Case:
    """156 small images (6 broken) and their clean, uninterrupted extraction: what every resumed run must equal."""

    def __init__(self, root: Path, checkpoint: Path) -> None:
        self.images = make_images(root / "images", 156, seed=3, broken=BROKEN)
        self.checkpoint = checkpoint
        self.clean_path = root / "clean.h5"
        proc = run(extract_argv(self.images, self.clean_path, checkpoint))
        assert proc.returncode == 0, proc.stderr
        self.clean = read_rows(self.clean_path)
        assert self.clean["num_images"] == 150 and self.clean["num_failed"] == len(BROKEN)

    def argv(self, out: Path | str, *extra: str) -> list[str]:
        return extract_argv(self.images, out, self.checkpoint, *extra)


BROKEN = (7, 40, 41, 99, 120, 155)
_CASE: list[Case] = []


@pytest.fixture(scope="session")
def case(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> Case:
    if not _CASE:
        _CASE.append(Case(tmp_path_factory.mktemp("case"), random_checkpoint("resnet18")))
    return _CASE[0]
