"""Safety: checkpoints never run code, outputs are never clobbered, one writer per output."""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import torch

from faultkit import (
    FAST,
    MODEL,
    Case,
    assert_prefix_of,
    assert_same_rows,
    case,  # noqa: F401 - the shared clean run (session fixture)
    committed_rows,
    journal_seq,
    kill,
    leftovers,
    make_images,
    popen,
    read_rows,
    sha256,
    wait_for,
)

pytestmark = pytest.mark.slow  # real processes killed; the shared clean run


class Payload:
    """Unpickling this runs os.system - exactly what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(folder: Path, marker: Path) -> list[Path]:
    state = {"conv1.weight": torch.zeros(2), "trap": Payload(marker)}
    zipped = folder / "evil.pth"
    torch.save(state, zipped)
    legacy = folder / "evil_legacy.pt"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    raw = folder / "evil.bin"
    raw.write_bytes(pickle.dumps(state))
    disguised = folder / "evil.safetensors"
    disguised.write_bytes(pickle.dumps(state))
    return [zipped, legacy, raw, disguised]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, case: Case, cli) -> None:
    marker = tmp_path / "PWNED"
    for evil in _evil_files(tmp_path, marker):
        out = tmp_path / f"{evil.stem}.h5"
        result = cli("extract", MODEL, str(case.images), "-o", str(out), "--checkpoint", str(evil), "--quiet")
        assert result.exit_code == 2, (evil.name, result.output)
        text = " ".join(result.output.split())
        assert str(evil) in text and ("refused" in text or "cannot read" in text), text
        assert not marker.exists(), f"{evil.name}: the payload ran"
        assert not out.exists()


def test_existing_output_is_never_clobbered(tmp_path: Path, case: Case, cli) -> None:
    out = tmp_path / "feats.h5"
    shutil.copy2(case.clean_path, out)
    digest = sha256(out)
    result = cli(*case.argv(out, "--workers", "0"))  # no --resume, no --overwrite
    assert result.exit_code == 2 and "exists" in result.output and "--overwrite" in result.output
    assert sha256(out) == digest
    # --overwrite that fails (a checkpoint for another model) leaves the old file as it was
    bad = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"stem.weight": torch.zeros(3)}, str(bad))
    result = cli("extract", MODEL, str(case.images), "-o", str(out), "--checkpoint", str(bad), "--overwrite", "--quiet")
    assert result.exit_code == 2, result.output
    assert sha256(out) == digest and leftovers(out) == []


def test_killed_overwrite_keeps_the_old_file_and_resume_finishes_it(tmp_path: Path, case: Case, cli) -> None:
    out = tmp_path / "feats.h5"
    shutil.copy2(case.clean_path, out)
    # make the "old" file different from what the new run writes, so a replacement is visible
    import h5py

    with h5py.File(out, "r+") as f:
        f.attrs["command"] = "the old run"
    digest = sha256(out)
    new = tmp_path / "feats.h5.featdump-new"
    proc = popen(case.argv(out, "--overwrite"))
    assert wait_for(lambda: journal_seq(new) >= 4, proc), proc.communicate()[1]
    kill(proc)
    proc.communicate(timeout=60)
    assert sha256(out) == digest  # untouched while the replacement was written
    assert new.exists()
    # --resume continues the replacement (not the old file) and swaps it in at the end
    result = cli(*case.argv(out, "--resume", "--workers", "0"))
    assert result.exit_code == 0, result.output
    assert not new.exists() and leftovers(out) == []
    rows = read_rows(out)
    assert_same_rows(rows, case.clean)
    with h5py.File(out, "r") as f:
        assert f.attrs["command"] != "the old run"


def test_overwrite_replaces_only_on_success(tmp_path: Path, random_checkpoint, cli) -> None:
    images = make_images(tmp_path / "few", 6)
    out = tmp_path / "feats.h5"
    argv = ["extract", MODEL, str(images), "-o", str(out), "--checkpoint", str(random_checkpoint("resnet18")), *FAST]
    assert cli(*argv).exit_code == 0
    digest = sha256(out)
    result = cli(*argv, "--overwrite", "--pool", "avg")
    assert result.exit_code == 0, result.output
    assert sha256(out) != digest and leftovers(out) == []
    assert read_rows(out)["features"]["layer4"].shape == (6, 512)


def test_two_runs_on_one_output(tmp_path: Path, case: Case, cli) -> None:
    out = tmp_path / "feats.h5"
    proc = popen(case.argv(out))
    try:
        assert wait_for(lambda: journal_seq(out) >= 2, proc), proc.communicate()[1]
        kill(proc, signal.SIGSTOP)  # the first run holds its lock, paused, for as long as we need
        for flag in ("--resume", "--overwrite"):
            result = cli(*case.argv(out, flag, "--workers", "0"))
            assert result.exit_code == 1, result.output
            assert "being written by another featdump run" in " ".join(result.output.split())
        assert not Path(f"{out}.featdump-new").exists()
    finally:
        kill(proc)
        proc.communicate(timeout=60)
    # the refused runs did not touch it: the last commit is a prefix of the clean run
    assert_prefix_of(committed_rows(out), case.clean)


def test_file_system_without_locks_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NFS without lockd / Lustre without -o flock answer flock with ENOLCK (no such FS here: the
    error is injected at the one call that would see it)."""
    from featdump.errors import FeatdumpError
    from featdump.store.locks import OutputLock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(FeatdumpError) as info:
        OutputLock(tmp_path / "feats.h5")
    assert "HDF5_USE_FILE_LOCKING=FALSE" in str(info.value) and "NFS" in str(info.value)
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    lock = OutputLock(tmp_path / "feats.h5")
    lock.release(remove=True)
