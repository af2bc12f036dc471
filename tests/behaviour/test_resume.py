"""--resume: any differing setting is refused (exit 2, file byte-identical, the setting named);
complete files are left alone; nothing to resume starts afresh."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run
from faultkit import (
    ENV,
    FAST,
    MODEL,
    ROOT,
    Case,
    assert_same_rows,
    case,  # noqa: F401 - the shared clean run (session fixture)
    journal_seq,
    kill,
    leftovers,
    make_images,
    popen,
    read_rows,
    sha256,
    wait_for,
)

pytestmark = pytest.mark.slow  # real processes killed and resumed; the shared clean run


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory, case: Case) -> Path:
    """A file whose run was SIGKILLed after a few commits (journal and unreferenced bytes left over)."""
    out = tmp_path_factory.mktemp("partial") / "feats.h5"
    proc = popen(case.argv(out))
    assert wait_for(lambda: journal_seq(out) >= 6, proc), proc.communicate()[1]
    kill(proc)
    proc.communicate(timeout=60)
    return out


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy2(src, dst)
    journal = Path(f"{src}-journal")
    if journal.exists():
        shutil.copy2(journal, Path(f"{dst}-journal"))
    return dst


def _state(out: Path) -> tuple[str, str]:
    journal = Path(f"{out}-journal")
    return sha256(out), sha256(journal) if journal.exists() else ""


DIFFERENT = [
    (["--out-indices", "1,2"], "out_indices"),
    (["--img-size", "96"], "input_size"),
    (["--output-stride", "16"], "output_stride"),
    (["--pool", "avg"], "pool"),
    (["--dtype", "float16"], "dtype"),
    (["--precision", "bf16"], "precision"),
]


def test_every_differing_setting_is_refused_byte_identical(tmp_path: Path, case: Case, partial: Path, cli) -> None:
    out = _copy(partial, tmp_path)
    before = _state(out)
    argv = case.argv(out, "--resume", "--workers", "0")
    for extra, setting in DIFFERENT:
        result = cli(*argv, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert f"{setting}=" in result.output and "--resume" in result.output, (extra, result.output)
        assert _state(out) == before, extra
    # other weights: random instead of the checkpoint
    result = cli("extract", MODEL, str(case.images), "-o", str(out), "--no-pretrained", *FAST, "--resume")
    assert result.exit_code == 2 and "weights=" in result.output, result.output
    # another model
    result = cli("extract", "resnet10t", str(case.images), "-o", str(out), "--no-pretrained", *FAST, "--resume")
    assert result.exit_code == 2 and "model=" in result.output, result.output
    assert _state(out) == before
    # the input list: one image more, one image less
    extra_img = case.images / "zz-new.png"
    shutil.copy2(next(case.images.rglob("img0000.png")), extra_img)
    try:
        result = cli(*argv)
        assert result.exit_code == 2 and "the input list differs" in result.output, result.output
    finally:
        extra_img.unlink()
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(str(p) for p in sorted(case.images.rglob("*.png"))[:-1]))
    result = cli("extract", MODEL, str(listed), "-o", str(out), "--checkpoint", str(case.checkpoint), *FAST, "--resume")
    assert result.exit_code == 2 and "the input list differs" in result.output, result.output
    assert _state(out) == before
    # a file that is not featdump's
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2, 3]
    digest = sha256(other)
    result = cli(*case.argv(other, "--resume"))
    assert result.exit_code == 2 and "not a featdump file" in result.output
    assert sha256(other) == digest


def test_resume_of_a_complete_file_changes_nothing(tmp_path: Path, case: Case, cli) -> None:
    out = tmp_path / "done.h5"
    shutil.copy2(case.clean_path, out)
    digest = sha256(out)
    result = cli(*case.argv(out, "--resume", "--workers", "0"))
    assert result.exit_code == 0, result.output
    assert sha256(out) == digest
    assert leftovers(out) == []
    result = cli(*case.argv(out, "--resume", "--workers", "0", "--dtype", "float16"))
    assert result.exit_code == 2 and "dtype=" in result.output, result.output
    assert sha256(out) == digest
    assert leftovers(out) == []  # not even the lock file it took


def test_resume_with_nothing_there_starts(tmp_path: Path, random_checkpoint, cli) -> None:
    """One command line for the first run and every requeue (Slurm --requeue)."""
    images = make_images(tmp_path / "few", 5)
    out = tmp_path / "first.h5"
    argv = ["extract", MODEL, str(images), "-o", str(out), "--checkpoint", str(random_checkpoint("resnet18")), *FAST]
    result = cli(*argv, "--resume")
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert rows["complete"] and rows["num_images"] == 5
    # killed before its first commit (an empty file and a journal that says so): started afresh too
    out.unlink()
    out.write_bytes(b"")
    Path(f"{out}-journal").write_bytes(b"")  # the lock file, made just before the file
    result = cli(*argv, "--resume")
    assert result.exit_code == 0, result.output
    assert read_rows(out)["num_images"] == 5


@pytest.mark.slow
def test_resume_with_another_batch_size_warns(tmp_path, imgs):
    import h5py

    from featdump.run.facts import previous_facts, rounding_note
    from featdump.store.output import resume_attrs

    out = tmp_path / "r.h5"
    run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "-q", "--batch-size", "2",
        "--device", "cpu", "--out-indices", "1", "--pool", "avg", check=True)  # fmt: skip
    assert previous_facts(resume_attrs(out)) is None  # complete: nothing to continue
    with h5py.File(out, "r+") as h5:
        h5.attrs["complete"] = False
    assert previous_facts(resume_attrs(out)) == {"batch_size": 2, "device": "cpu"}
    assert rounding_note({"batch_size": 2, "device": "cpu"}, {"batch_size": 2, "device": "cpu"}) is None
    note = rounding_note({"batch_size": 2, "device": "cpu"}, {"batch_size": 3, "device": "cpu"})
    assert note and "--batch-size 2 then, 3 now" in note and "float rounding" in note
    p = run("extract", "resnet18", str(imgs), "-o", str(out), "--no-pretrained", "-q", "--batch-size", "3",
            "--device", "cpu", "--out-indices", "1", "--pool", "avg", "--resume")  # fmt: skip
    assert p.returncode == 0 and "featdump: warning: --resume with another --batch-size" in p.stderr, p.stderr


def test_resume_without_batch_size_keeps_the_files(tmp_path: Path, case: Case, partial: Path) -> None:
    out = _copy(partial, tmp_path)  # started with --batch-size 4, not the CPU default
    argv = case.argv(out, "--resume")
    i = argv.index("--batch-size")
    del argv[i : i + 2]
    proc = popen(argv)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "warning" not in err, err  # no "--resume with another --batch-size"
    assert_same_rows(read_rows(out), case.clean)


def _batches(argv: list[str], kill_after_commit: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``featdump ARGV`` in a process of its own that prints the batch sizes it computes; with
    ``kill_after_commit``, SIGKILLed at its first forward pass once that file has a commit."""
    code = (
        "import os, signal, sys, time\n"
        "from faultkit import journal_seq\n"
        "import featdump.run.forward as forward\n"
        "call, out = forward.Forward.__call__, sys.argv.pop(1)\n"
        "def counted(self, x):\n"
        "    while out and journal_seq(out) < 2:  # the file made, then its first batch\n"
        "        time.sleep(0.01)\n"
        "    if out:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    print('batch', len(x), flush=True)\n"
        "    return call(self, x)\n"
        "forward.Forward.__call__ = counted\n"
        "from featdump.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [sys.executable, "-c", code, str(kill_after_commit or ""), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_resume_keeps_the_batch_size_of_a_file_whose_commits_hold_only_failures(tmp_path: Path) -> None:
    """A file whose committed inputs all failed (no rows yet) is resumed at its own batch size: the
    resumed run cuts the batches an uninterrupted one would (resnet18's default is 16, the file's 8)."""
    imgs = make_images(tmp_path / "imgs", 40, broken=tuple(range(8)))
    out = tmp_path / "feats.h5"
    argv = ["extract", MODEL, str(imgs), "-o", str(out), "--no-pretrained", "--img-size", "64", "--device", "cpu", "-q"]
    first = _batches([*argv, "--batch-size", "8"], kill_after_commit=out)
    assert first.returncode == -signal.SIGKILL, first.stderr
    from featdump.store.output import resume_attrs

    attrs = resume_attrs(out)  # its last commit (through the journal): the 8 failures, no rows
    assert attrs is not None and (attrs["num_images"], attrs["inputs_done"], attrs["batch_size"]) == (0, 8, 8)
    again = _batches([*argv, "--resume"])
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    assert again.stdout.split() == ["batch", "8"] * 4, again.stdout
