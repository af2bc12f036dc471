"""Fault injection: real runs SIGKILLed at many points, each resumed; the end result equals a clean run.

* ``test_kill_chain_equals_clean_run``: one ``featdump extract`` over 156 images (6 broken),
  killed 10+ times in a row - some right after a commit, some a little later (mid-forward,
  mid-write), some at an exact write syscall inside a commit (``strace`` fault injection) - and
  resumed after every kill. After each kill the last commit is a prefix of the clean run; at the
  end every row and value equals the clean run's.
* ``test_kill_at_write_syscalls``: the storage layer alone (no model, so a process costs ~0.3 s)
  killed at write syscalls spread over the whole run, from creation to the final commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from faultkit import (
    Case,
    assert_prefix_of,
    assert_same_rows,
    case,  # noqa: F401 - the shared clean run (session fixture)
    committed_rows,
    journal_seq,
    kill,
    leftovers,
    pending_redo,
    popen,
    read_rows,
    run,
    wait_for,
)

STRACE = shutil.which("strace")

# (how, argument): "commit" kills as soon as the journal shows commit number N (counted over the
# whole file, so the kills spread over the run); "late" waits for commit N, then a few ms more,
# landing mid-batch (decode, forward or write); "strace" kills at the N-th pwrite64 of the process
# (inside recovery, a chunk write or a commit: exact, not timing-dependent).
KILLS = [
    ("strace", 45),
    ("commit", 7),
    ("strace", 150),
    ("late", 13),
    ("commit", 19),
    ("strace", 300),
    ("late", 26),
    ("commit", 32),
    ("late", 38),
    ("commit", 44),
]


def _strace_prefix(n: int) -> list[str]:
    return [STRACE, "-f", "-o", "/dev/null", "-e", "trace=pwrite64", "-e", f"inject=pwrite64:signal=SIGKILL:when={n}"]


@pytest.mark.slow
def test_kill_chain_equals_clean_run(tmp_path: Path, case: Case) -> None:
    out = tmp_path / "killed.h5"
    kills, log = 0, []
    for i, (how, arg) in enumerate(KILLS):
        argv = case.argv(out, *(["--resume"] if i else []))
        if how == "strace" and STRACE:
            full = dict(os.environ, FEATDUMP_COMMIT_SECONDS="0")
            proc = subprocess.Popen(
                [*_strace_prefix(arg), sys.executable, "-m", "featdump", *argv],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, start_new_session=True,
            )  # fmt: skip
        else:  # without strace, a timed kill takes its place
            proc = popen(argv)
            target = arg if how != "strace" else journal_seq(out) + 2
            alive = wait_for(lambda: journal_seq(out) >= target, proc)  # noqa: B023 - called within this iteration
            if alive and how == "late":
                time.sleep(0.004 * (1 + i % 4))
            kill(proc)
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:  # it finished before the kill point: the chain is over
            break
        assert proc.returncode in (-9, 137), f"kill {i} ({how} {arg}): exit {proc.returncode}\n{err}"
        kills += 1
        if out.exists():
            part = committed_rows(out)
            assert not part["complete"]
            assert_prefix_of(part, case.clean)
            if not pending_redo(out):  # a plain reader sees the same (except right inside an apply step)
                assert_prefix_of(read_rows(out), case.clean)
            log.append((how, arg, part["inputs_done"]))
    assert kills >= 10, f"only {kills} kills landed before the run finished: {log}"

    proc = run(case.argv(out, "--resume"))
    assert proc.returncode == 0, proc.stderr
    assert_same_rows(read_rows(out), case.clean)
    assert leftovers(out) == []
    done = [d for _, _, d in log]  # the kills really were spread over the run
    assert min(done) < 40 and max(done) > 100, log


WRITER = r"""
import sys
import numpy as np
from featdump.data.batching import Failure, Rows
from featdump.model.layers import LayerInfo
from featdump.store.sink import NothingCommitted, Store

path, batches, B = sys.argv[1], int(sys.argv[2]), 5
layers = [LayerInfo("a", "a", 1, 8, 4, (8, 16, 16)), LayerInfo("b", "b", 2, 16, 8, (16, 8, 8)),
          LayerInfo("c", "c", 3, 32, 16, (32,))]
attrs = {"format": "featdump", "model": "fake", "input_digest": "x"}
store = None
if sys.argv[3:] == ["resume"]:
    try:
        store = Store.resume(path, attrs, layers)
    except NothingCommitted:
        pass
if store is None:
    store = Store.create(path, attrs, layers, pool="none", dtype="float32", compression=sys.argv[4] if len(sys.argv) > 4 else "none")
for b in range(store.progress.inputs_done // B, batches):
    rows = [r for r in range(b * B, b * B + B) if r % 7 != 3]
    feats = [np.stack([np.full(l.shape, r + 0.25 * i, np.float32) for r in rows]) for i, l in enumerate(layers)]
    failed = [Failure(r, f"img{r:05d}.png", f"err {r}") for r in range(b * B, b * B + B) if r % 7 == 3]
    store.append(Rows(feats, [f"img{r:05d}.png" for r in rows], failed, (b + 1) * B))
if not store.complete:
    store.finish()
store.close()
"""


def _expected(batches: int) -> dict:
    total = batches * 5
    good = [r for r in range(total) if r % 7 != 3]
    return {"paths": [f"img{r:05d}.png" for r in good], "failed": [f"img{r:05d}.png" for r in range(total) if r % 7 == 3]}


@pytest.mark.slow
@pytest.mark.skipif(STRACE is None, reason="needs strace for syscall-exact SIGKILL injection")
def test_kill_at_write_syscalls(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, FEATDUMP_COMMIT_SECONDS="0")
    batches = 12
    # how many pwrite64 calls a whole run makes, to spread the kill points over all of it
    count = subprocess.run(
        [STRACE, "-f", "-c", "-e", "trace=pwrite64", sys.executable, str(script), str(tmp_path / "count.h5"), str(batches)],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    line = next(ln for ln in count.stderr.splitlines() if ln.strip().endswith("pwrite64"))
    total = int(line.split()[3])
    expect = _expected(batches)
    points = sorted({1, 2, 3, 5, 8, total - 2, total - 1, total} | set(np.linspace(4, total - 3, 14).astype(int).tolist()))
    seen = set()
    for n in points:
        out = tmp_path / f"k{n}.h5"
        killed = subprocess.run(
            [*_strace_prefix(n), sys.executable, str(script), str(out), str(batches)], capture_output=True, text=True, env=env
        )
        assert killed.returncode in (-9, 137), (n, killed.stderr[-2000:])
        resumed = subprocess.run([sys.executable, str(script), str(out), str(batches), "resume"], capture_output=True, text=True, env=env)
        assert resumed.returncode == 0, (n, resumed.stderr[-2000:])
        rows = read_rows(out)
        assert rows["complete"] and rows["paths"] == expect["paths"] and rows["failed"] == expect["failed"], n
        for i, name in enumerate("abc"):
            want = np.array([int(p[3:8]) + 0.25 * i for p in expect["paths"]], np.float32)
            got = rows["features"][name].reshape(len(want), -1)
            assert np.array_equal(got.min(1), want) and np.array_equal(got.max(1), want), (n, name)
        assert leftovers(out) == []
        seen.add(n)
        out.unlink()
    assert len(seen) >= 20
