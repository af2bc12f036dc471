"""--resume: any differing setting is refused (exit 2, file byte-identical, the setting named);
complete files are left alone; nothing to resume starts afresh; and properties of the offsets."""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    FAST,
    MODEL,
    Case,
    assert_prefix_of,
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


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


# --------------------------------------------------------------------------- properties


def _fake_layers():
    from featdump.model.backbone import LayerInfo

    return [LayerInfo("a", "a", 1, 4, 4, (4, 3, 3)), LayerInfo("b", "b", 2, 6, 8, (6,))]


def _write(path: Path, ok: list[bool], batch: int, start_store=None, stop_after: int | None = None):
    """The pipeline's arithmetic in miniature: batches over the list from ``inputs_done``."""
    from featdump.store.sink import Store

    layers = _fake_layers()
    store = start_store or Store.create(path, {"format": "featdump"}, layers, pool="none", dtype="float32", compression="none")
    start = store.progress.inputs_done
    todo = list(range(start, len(ok)))
    for k, b0 in enumerate(range(0, len(todo), batch)):
        if stop_after is not None and k == stop_after:
            return store
        chunk = todo[b0 : b0 + batch]
        good = [i for i in chunk if ok[i]]
        feats = [np.stack([np.full(l.shape, i + 0.5 * j, np.float32) for i in good]) if good else np.zeros((0, *l.shape), np.float32) for j, l in enumerate(layers)]
        store.append(feats, [f"p{i}" for i in good], [(f"p{i}", "bad") for i in chunk if not ok[i]], start + b0 + len(chunk))
    return store


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ok=st.lists(st.booleans(), min_size=1, max_size=40),
    batch=st.integers(1, 7),
    crash_after=st.integers(0, 8),
    commit_seconds=st.sampled_from(["0", "3600"]),
)
def test_resume_offsets_property(tmp_path_factory, monkeypatch, ok, batch, crash_after, commit_seconds) -> None:
    """Kill a writer (a forked process, os._exit) after any number of batches, with commits after
    every batch or only at the end; resuming yields exactly the rows of one uninterrupted pass."""
    from featdump.store.sink import NothingCommitted, Store

    monkeypatch.setenv("FEATDUMP_COMMIT_SECONDS", commit_seconds)
    folder = tmp_path_factory.mktemp("prop")
    clean, path = folder / "clean.h5", folder / "resumed.h5"
    store = _write(clean, ok, batch)
    store.finish()
    store.close()
    pid = os.fork()
    if pid == 0:  # the child dies mid-run, without any cleanup
        try:
            _write(path, ok, batch, stop_after=crash_after)
        finally:
            os._exit(9)
    os.waitpid(pid, 0)
    try:
        store = Store.resume(path, {"format": "featdump"}, _fake_layers())
        part = read_rows(path)
        assert_prefix_of(part, read_rows(clean))
        assert part["inputs_done"] % batch == 0 or part["inputs_done"] == len(ok)
    except NothingCommitted:
        store = None
    store = _write(path, ok, batch, start_store=store)
    if not store.complete:
        store.finish()
    store.close()
    assert_same_rows(read_rows(path), read_rows(clean))


# (list files strip each line, so names here neither start nor end with a space)
names = st.text(alphabet=string.ascii_letters + string.digits + "-_ éß中", min_size=1, max_size=8).map(
    lambda t: t.strip() or "x"
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.lists(st.tuples(st.sampled_from(["", "a", "B", "a/z", "é"]), names), min_size=1, max_size=15, unique=True))
def test_list_order_property(tmp_path_factory, tree) -> None:
    """Discovery sorts by stored path in code-point order, whatever the order the inputs are given
    in or the file system lists them; the digest --resume compares depends only on that list."""
    from featdump.data.discover import discover, list_digest

    root = tmp_path_factory.mktemp("tree")
    for folder, name in tree:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{name}.png").write_bytes(b"x")
    refs = discover([str(root)])
    paths = [r.path for r in refs]
    assert paths == sorted(paths) == sorted({(f"{d}/" if d else "") + f"{n}.png" for d, n in tree})
    files = [str(root / p) for p in paths]
    shuffled = files[::-1]
    by_files = discover(shuffled)
    assert [r.path for r in by_files] == sorted(files)
    listing = root / "list.txt"
    listing.write_text("\n".join(reversed(paths)))
    assert list_digest(discover([str(listing)])) == list_digest(refs)
