"""Ctrl-C and SIGTERM on real processes: stop after the batch, exit 130/143 with a resume hint;
a second signal exits at once; every stop resumes to exactly the clean run's rows."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from faultkit import (
    Case,
    assert_prefix_of,
    assert_same_rows,
    case,  # noqa: F401 - the shared clean run (session fixture)
    committed_rows,
    journal_seq,
    leftovers,
    popen,
    read_rows,
    run,
    wait_for,
)

pytestmark = pytest.mark.slow  # real processes interrupted and resumed


def _stop(proc, sig: int, times: int = 1, group: bool = True) -> tuple[int, str, float]:
    t0 = time.monotonic()
    for _ in range(times):
        (os.killpg if group else os.kill)(proc.pid, sig)
        time.sleep(0.05 if times > 1 else 0)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - t0


def test_sigint_sigterm_and_double_sigint_resume_to_clean_rows(tmp_path: Path, case: Case) -> None:
    out = tmp_path / "feats.h5"

    # 1. Ctrl-C (to the whole process group, as a terminal sends it, workers included)
    proc = popen(case.argv(out))
    assert wait_for(lambda: journal_seq(out) >= 5, proc), proc.communicate()[1]
    rc, err, took = _stop(proc, signal.SIGINT)
    assert rc == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGINT" in lines[0] and "resume with --resume" in lines[0], err
    assert took < 60
    part = read_rows(out)  # a plain reader: consistent, not complete, a prefix of the clean run
    assert not part["complete"] and part["num_images"] > 0
    assert_prefix_of(part, case.clean)
    assert leftovers(out) == []  # a clean stop commits and drops the journal

    # 2. two Ctrl-C in a row: the second leaves at once, the file still resumable
    before = part["inputs_done"]
    base = journal_seq(out)  # commits are counted over the file's life; wait for 3 of this run
    proc = popen(case.argv(out, "--resume"))
    assert wait_for(lambda: journal_seq(out) >= base + 3, proc), proc.communicate()[1]
    rc, err, took = _stop(proc, signal.SIGINT, times=2)
    assert rc == 130, err
    # The second signal either lands while the run is still stopping (it leaves at once, saying so)
    # or after the run has already committed and exited cleanly: both end in 130 with a resume hint.
    assert ("second SIGINT" in err or "stopped by SIGINT after committing" in err) and "--resume" in err, err
    assert "Traceback" not in err
    part = committed_rows(out)
    assert not part["complete"] and part["inputs_done"] >= before
    assert_prefix_of(part, case.clean)

    # 3. SIGTERM (Slurm's pre-emption signal, sent to every process of the job): exit 143
    base = journal_seq(out)
    proc = popen(case.argv(out, "--resume"))
    assert wait_for(lambda: journal_seq(out) >= base + 3, proc), proc.communicate()[1]
    rc, err, took = _stop(proc, signal.SIGTERM)
    assert rc == 143, err
    assert "stopped by SIGTERM" in err and "resume with --resume" in err
    assert_prefix_of(read_rows(out), case.clean)

    # 4. resume to the end: the same rows and values as the run that was never interrupted
    done = run(case.argv(out, "--resume"))
    assert done.returncode == 0, done.stderr
    assert_same_rows(read_rows(out), case.clean)
    assert leftovers(out) == []
