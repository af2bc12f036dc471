"""Out of disk space and read-only folders: exit 1 with one line; the partial file stays resumable.

ENOSPC is real: a small tmpfs mounted by the test (needs root; skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from faultkit import (
    Case,
    assert_prefix_of,
    assert_same_rows,
    case,  # noqa: F401 - the shared clean run (session fixture)
    committed_rows,
    leftovers,
    read_rows,
    sha256,
)

pytestmark = pytest.mark.slow  # real ENOSPC on a tmpfs, runs killed and resumed


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 6 MiB tmpfs: room for the file's skeleton and a couple of batches, then ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a real ENOSPC needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_out_of_space_then_read_only_then_resume(small_fs: Path, case: Case, cli) -> None:
    out = small_fs / "feats.h5"
    # the space check sees the disk is too small and refuses before anything is written ...
    result = cli(*case.argv(out, "--workers", "0"))
    assert result.exit_code == 2 and "not enough space" in result.output and "--no-space-check" in result.output
    assert not out.exists()
    # ... and without it the run fills the disk: a real ENOSPC mid-run
    argv = case.argv(out, "--workers", "0", "--no-space-check")
    result = cli(*argv)
    assert result.exit_code == 1, result.output
    line = _one_line(result.output)
    assert "out of disk space" in line and "--resume" in line, line
    part = committed_rows(out)  # what was committed before the disk filled is intact
    assert not part["complete"]
    assert_prefix_of(part, case.clean)

    # still full: refused the same way, nothing lost
    result = cli(*case.argv(out, "--resume", "--workers", "0", "--no-space-check"))
    assert result.exit_code == 1 and "out of disk space" in result.output, result.output
    assert_prefix_of(committed_rows(out), case.clean)

    # the folder turns read-only (a full quota, a remount): one line, the file byte-identical
    assert _mount("-o", "remount,ro", str(small_fs)).returncode == 0
    before = sha256(out)
    result = cli(*case.argv(out, "--resume", "--workers", "0", "--no-space-check"))
    assert result.exit_code == 1, result.output
    line = _one_line(result.output)
    assert "read-only" in line and "resumable" in line, line
    assert sha256(out) == before
    result = cli(*case.argv(small_fs / "new.h5", "--workers", "0", "--no-space-check"))
    assert result.exit_code == 1 and "read-only" in result.output, result.output

    # space again: --resume finishes with exactly the clean run's rows
    assert _mount("-o", "remount,rw,size=256m", str(small_fs)).returncode == 0
    result = cli(*case.argv(out, "--resume", "--workers", "0"))
    assert result.exit_code == 0, result.output
    assert_same_rows(read_rows(out), case.clean)
    assert leftovers(out) == []


def test_unwritable_folder_without_root(tmp_path: Path, case: Case, cli) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into mode-555 folders; the read-only tmpfs test covers root")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    result = cli(*case.argv(folder / "feats.h5", "--workers", "0"))
    assert result.exit_code == 1 and "not writable" in result.output, result.output


def test_merge_copy_refuses_a_folder_without_room(small_fs: Path, case: Case, cli) -> None:
    """merge --copy checks the room for the shards' stored bytes before writing: exit 2 with the
    numbers, nothing left behind (HDF5 can crash the process on a full disk while closing a file,
    so the copy must not start); the virtual merge needs no room and still works."""
    (small_fs / "filler").write_bytes(b"\0" * (5 << 20))  # about 1 MiB left
    result = cli("merge", str(case.clean_path), "-o", str(small_fs / "m.h5"), "--copy")
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert "not enough space for merge --copy" in line and "MiB" in line and "without --copy" in line, line
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    result = cli("merge", str(case.clean_path), "-o", str(small_fs / "m.h5"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("fmt", ["safetensors", "npy", "zarr"])
def test_export_out_of_space_is_one_line_and_the_same_command_then_works(small_fs: Path, case: Case, cli, fmt: str) -> None:
    from featdump.errors import FeatdumpError
    from featdump.store.export import read_export

    (small_fs / "filler").write_bytes(b"\0" * ((6 << 20) - (64 << 10)))  # about 64 KiB left
    argv = ("export", str(case.clean_path), "-o", str(small_fs / "emb"), "--format", fmt, "--pool", "avg")
    result = cli(*argv)
    assert result.exit_code == 1, result.output
    line = _one_line(result.output)
    assert "out of disk space writing" in line and "run the same export command again" in line, line
    with pytest.raises(FeatdumpError, match="unfinished export"):
        read_export(small_fs / "emb")
    (small_fs / "filler").unlink()
    result = cli(*argv)  # as the message says: no --overwrite
    assert result.exit_code == 0, result.output
    assert read_export(small_fs / "emb")["rows"] == case.clean["num_images"]


def test_bench_on_a_full_disk_does_not_suggest_resume(small_fs: Path, photos: Path, cli) -> None:
    res = cli("bench", "resnet18", str(photos), "-o", str(small_fs / "x.h5"), "--no-pretrained", "--img-size", "64",
              "--seconds", "2", "--images", "16")  # fmt: skip
    assert res.exit_code == 1
    line = _one_line(res.stderr)
    assert line.startswith(f"featdump: error: out of disk space in {small_fs}") and "--resume" not in line
    assert list(small_fs.iterdir()) == []  # the scratch file is gone
