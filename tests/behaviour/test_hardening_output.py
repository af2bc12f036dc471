"""Hostile outputs: what an adversary put at ``-o``, beside it, or in the environment.

featdump creates, resumes or replaces only regular files; one writer per file whatever name reaches
it; a killed ``merge --copy`` leaves nothing behind for good; every environment setting is checked
before anything is created; a ``{shard}`` spec cannot pad a name to 400 characters; a folder where
the journal goes does not stop readers. Every attack goes through the real command.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from conftest import ROOT, invoke
from faultkit import ENV, MODEL, NO_MODEL, journal_seq, kill, make_images, popen, read_rows, wait_for

BATCH = ("--img-size", "64", "--batch-size", "1", "--device", "cpu", "--quiet")


class Kit:
    """40 small images, a checkpoint, and their clean extraction (the rows every run must equal)."""

    def __init__(self, root: Path, checkpoint: Path) -> None:
        self.images = make_images(root / "images", 40, seed=11)
        self.checkpoint = checkpoint
        self.ref = root / "ref.h5"
        res = invoke(*self.argv(self.ref))
        assert res.exit_code == 0, res.output
        self.rows = read_rows(self.ref)

    def argv(self, out: Path | str, *extra: str, model: str = MODEL) -> list[str]:
        return ["extract", model, str(self.images), "-o", str(out), "--checkpoint", str(self.checkpoint), *BATCH, *extra]

    def run(self, out: Path | str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = popen(self.argv(out, *extra), env)
        stdout, stderr = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> Kit:
    return Kit(tmp_path_factory.mktemp("hardening"), random_checkpoint("resnet18"))


def one_line(output: str) -> str:
    return " ".join(output.split())


def snapshot(folder: Path) -> dict[str, tuple[Any, ...]]:
    """Everything in ``folder`` (names, kinds, devices, link targets, contents): "untouched" means equal."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            extra: Any = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            extra = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            extra = st.st_rdev
        out[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_ino, extra)
    return out


def assert_same_rows(path: Path, kit: Kit) -> None:
    rows = read_rows(path)
    assert rows["complete"] and rows["paths"] == kit.rows["paths"] and rows["failed"] == kit.rows["failed"]
    for name, ref in kit.rows["features"].items():
        assert np.array_equal(rows["features"][name], ref), name


# --------------------------------------------------------------------------- 1. only regular files


def _make(kind: str, folder: Path) -> Path:
    path = folder / "out"
    if kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "folder":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    elif kind == "dangling":
        path.symlink_to(folder / "nowhere.h5")
    elif kind == "link-to-device":
        os.mknod(folder / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        path.symlink_to(folder / "null")
    return path


WHAT = {
    "device": "is a character device, not a regular file",
    "fifo": "is a FIFO (named pipe), not a regular file",
    "socket": "is a socket, not a regular file",
    "folder": "is a folder",
    "dangling": "is a symbolic link to",
    "link-to-device": "is a character device, not a regular file",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(WHAT))
def test_anything_but_a_regular_file_at_o_is_refused_untouched(kind: str, kit: Kit, tmp_path: Path, cli) -> None:
    out = _make(kind, tmp_path)
    before = snapshot(tmp_path)
    for flag in ((), ("--resume",), ("--overwrite",)):
        result = cli(*kit.argv(out, "--workers", "0", *flag, model=NO_MODEL))
        assert result.exit_code == 2, (flag, result.output)
        text = one_line(result.output)
        assert f"-o {out}" in text and WHAT[kind] in text, text
        assert snapshot(tmp_path) == before, flag  # the node, and nothing created beside it


@pytest.mark.parametrize("content", [b"", b"my notes, not features\n", "hdf5"])
def test_resume_never_touches_a_file_featdump_did_not_make(content: Any, kit: Kit, tmp_path: Path, cli) -> None:
    out = tmp_path / "feats.h5"
    if content == "hdf5":
        with h5py.File(out, "w") as f:
            f["data"] = np.arange(10)
    else:
        out.write_bytes(content)
    before = snapshot(tmp_path)
    result = cli(*kit.argv(out, "--workers", "0", "--resume", model=NO_MODEL))
    assert result.exit_code == 2, result.output
    assert f"--resume: {out} is not a featdump file; use --overwrite to replace it" in one_line(result.output)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_overwrite_replaces_a_regular_file(kit: Kit, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    out.write_text("not features")
    proc = kit.run(out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert_same_rows(out, kit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5"]


@pytest.mark.slow
def test_writing_through_a_symlink_writes_the_file_it_points_to(kit: Kit, tmp_path: Path) -> None:
    """--overwrite and --resume through a link replace/continue the target; the link stays a link."""
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "feats.h5"
    real.write_text("old content")
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    proc = kit.run(link, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert_same_rows(real, kit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.h5", "real"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["feats.h5"]
    proc = kit.run(link, "--resume")  # complete: nothing to do, and nothing changes
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert_same_rows(real, kit)


# --------------------------------------------------------------------------- 4. one writer per file


@pytest.mark.slow
@pytest.mark.parametrize("first", ["real", "link"])
def test_two_writers_through_a_symlink(first: str, kit: Kit, tmp_path: Path) -> None:
    """Two real processes, one through a symlink and one through the real name: the second is
    refused whichever name it uses, and the first finishes with the right rows."""
    real = tmp_path / "feats.h5"
    link = tmp_path / "alias.h5"
    link.symlink_to(real)
    if first == "real":
        a, b = kit.argv(real), [kit.argv(link, "--resume"), kit.argv(link, "--overwrite")]
    else:  # through the link: --overwrite of an existing file, then a run through the real name
        real.write_text("old")
        a, b = kit.argv(link, "--overwrite"), [kit.argv(real, "--resume"), kit.argv(real, "--overwrite")]
    proc = popen(a)
    try:
        target = real if first == "real" else Path(f"{real}.featdump-new")
        assert wait_for(lambda: journal_seq(target) >= 0 or journal_seq(real) >= 0, proc), proc.communicate()[1]
        kill(proc, signal.SIGSTOP)  # holds its lock, paused, while the second run tries
        for argv in b:
            second = subprocess.run(
                [sys.executable, "-m", "featdump", *argv], capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300
            )
            assert second.returncode != 0, second.stderr
            assert "being written by another featdump run" in one_line(second.stderr), second.stderr
        kill(proc, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        kill(proc)
    assert proc.returncode == 0, stderr
    assert link.is_symlink()
    assert_same_rows(real, kit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.h5", "feats.h5"]


def test_without_locks_the_docs_and_message_say_silent_corruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from featdump.errors import FeatdumpError
    from featdump.store.locks import OutputLock

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # NFS without lockd (none here: injected)
    with pytest.raises(FeatdumpError) as info:
        OutputLock(tmp_path / "feats.h5")
    assert "HDF5_USE_FILE_LOCKING=FALSE" in str(info.value) and "corrupt it silently" in str(info.value)
    docs = " ".join((ROOT / "docs" / "safety.md").read_text().split())
    assert "HDF5_USE_FILE_LOCKING=FALSE" in docs and "silently corrupt" in docs


# --------------------------------------------------------------------------- 9. merge's temp files


@pytest.fixture(scope="module")
def shards(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shards")
    out = []
    for i in range(2):
        path = folder / f"feats.shard-0000{i}-of-00002.h5"
        res = invoke(*kit.argv(folder / "feats.h5", "--shard", f"{i}/2"))
        assert res.exit_code == 0, res.output
        out.append(path)
    return out


@pytest.mark.slow
def test_next_merge_removes_the_temp_file_of_a_killed_merge_copy(shards: list[Path], tmp_path: Path, kit: Kit) -> None:
    merged = tmp_path / "all.h5"
    # a real merge --copy, SIGKILLed in the middle of copying rows
    killer = (
        "import os, signal, sys\n"
        "import featdump.store.merge as m\n"
        "m.row_blocks = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from featdump.cli.commands import app\n"
        "sys.argv = ['featdump', 'merge', *sys.argv[1:]]\n"
        "app()\n"
    )
    proc = subprocess.run([sys.executable, "-c", killer, *map(str, shards), "-o", str(merged), "--copy"], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".all.h5.featdump-tmp-"), stale
    # another merge is writing its own temp file right now (it holds a shared lock): that one stays
    held = tmp_path / ".all.h5.featdump-tmp-4000000"
    held.write_bytes(b"x" * 1000)
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        for mode in (("--copy",), ()):
            proc = subprocess.run(
                [sys.executable, "-m", "featdump", "merge", *map(str, shards), "-o", str(merged), "--overwrite", *mode],
                capture_output=True, text=True, timeout=300,
            )
            assert proc.returncode == 0, proc.stderr
            assert sorted(p.name for p in tmp_path.iterdir()) == [held.name, "all.h5"]
            assert_same_rows(merged, kit)
    finally:
        os.close(fd)
    proc = subprocess.run(
        [sys.executable, "-m", "featdump", "merge", *map(str, shards), "-o", str(merged), "--overwrite"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.h5"]  # no longer held: stale, removed


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_merge_replaces_only_regular_files(shards: list[Path], tmp_path: Path, cli) -> None:
    out = _make("device", tmp_path)
    result = cli("merge", *map(str, shards), "-o", str(out), "--overwrite")
    assert result.exit_code == 2 and "is a character device, not a regular file" in one_line(result.output)
    assert stat.S_ISCHR(os.lstat(out).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --------------------------------------------------------------------------- 10. the environment


@pytest.mark.slow
def test_corrected_commit_seconds_reruns_without_overwrite(kit: Kit, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    proc = kit.run(out, env={"FEATDUMP_COMMIT_SECONDS": "abc"})
    assert proc.returncode == 2 and "FEATDUMP_COMMIT_SECONDS='abc'" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = kit.run(out, env={"FEATDUMP_COMMIT_SECONDS": "0.5"})  # the same command, corrected
    assert proc.returncode == 0, proc.stderr
    assert_same_rows(out, kit)


# --------------------------------------------------------------------------- 11. -o templates, journals


def test_a_400_wide_shard_spec_is_one_short_line(kit: Kit, tmp_path: Path, cli) -> None:
    result = cli(*kit.argv(tmp_path / "{shard:>400}.h5", "--workers", "0", model=NO_MODEL))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300 and "{shard:05d}" in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_journal_that_is_not_a_file(kind: str, kit: Kit, tmp_path: Path, cli) -> None:
    """Readers of a good file ignore it; a writer is refused, naming it; nothing changes."""
    good = tmp_path / "feats.h5"
    good.write_bytes(kit.ref.read_bytes())
    journal = tmp_path / "feats.h5-journal"
    journal.mkdir() if kind == "folder" else os.mkfifo(journal)
    before = snapshot(tmp_path)
    shown = subprocess.run([sys.executable, "-m", "featdump", "show", str(good)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "40" in shown.stdout
    import featdump

    with featdump.open(good) as f:
        assert len(f) == 40
    for flag in ("--resume", "--overwrite"):
        result = cli(*kit.argv(good, "--workers", "0", flag, model=NO_MODEL))
        assert result.exit_code == 2, result.output
        assert f"{journal} is a" in one_line(result.output) and "not featdump's journal" in one_line(result.output)
    assert snapshot(tmp_path) == before
