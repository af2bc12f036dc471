"""The HDF5 sink: chunks hold whole planes, zstd is lossless and compact (its level from the
environment), and a writer killed after any batch resumes to the rows of one uninterrupted pass."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featdump.data.batching import Failure, Rows

from conftest import run
from faultkit import assert_prefix_of, assert_same_rows, read_rows


@pytest.mark.parametrize(
    "shape", [(64, 112, 112), (256, 56, 56), (2048, 7, 7), (24, 56, 56), (96, 28, 28), (197, 384), (1000,), (97, 300, 300)]
)
@pytest.mark.parametrize("itemsize", [2, 4])
def test_chunks_hold_whole_planes_without_padding(shape: tuple[int, ...], itemsize: int) -> None:
    from featdump.store.format import chunk_shape

    chunks = chunk_shape(shape, itemsize)
    assert chunks[1:] == shape or (chunks[0] == 1 and chunks[2:] == shape[1:])
    nbytes = math.prod(chunks) * itemsize
    assert nbytes <= (1 << 20) or chunks[1] == 1
    per_image = math.prod(shape) * itemsize
    if chunks[0] == 1 and chunks[1:] != shape and shape[0] != 97:
        assert shape[0] % chunks[1] == 0  # no chunk is part padding
    if per_image >= (64 << 10):
        assert nbytes >= min(per_image, 256 << 10)  # not needlessly small


@pytest.mark.slow
def test_zstd_is_lossless_and_compact(tmp_path: Path, random_checkpoint: Any, photos: Path) -> None:
    """Post-ReLU maps (resnet18 levels) with --compression zstd: same values, much smaller."""
    import hdf5plugin  # noqa: F401 - readers of zstd files need it

    ckpt = random_checkpoint("resnet18")
    outs = {}
    for codec in ("none", "zstd"):
        out = tmp_path / f"{codec}.h5"
        run("extract", "resnet18", str(photos), "-o", str(out), "--checkpoint", str(ckpt), "--img-size", "96",
            "--out-indices", "0,1", "--dtype", "float16", "--compression", codec, "--quiet", check=True)  # fmt: skip
        outs[codec] = out
    with h5py.File(outs["none"]) as a, h5py.File(outs["zstd"]) as b:
        assert b.attrs["compression"] == "zstd"
        for name in a["features"]:
            np.testing.assert_array_equal(a["features"][name][:], b["features"][name][:])
            raw = b["features"][name].size * 2
            assert b["features"][name].id.get_storage_size() < 0.8 * raw


@pytest.mark.slow
def test_zstd_level_from_the_environment(tmp_path: Path, random_checkpoint: Any, photos: Path) -> None:
    """FEATDUMP_ZSTD_LEVEL picks zstd's level (negative: its fast modes); the values stay exact
    and the level is in the file's filter settings; a bad level exits 2 before any model loads."""
    import hdf5plugin  # noqa: F401 - readers of zstd files need it

    ckpt = random_checkpoint("resnet18")
    base = ["extract", "resnet18", str(photos), "--checkpoint", str(ckpt), "--img-size", "96",
            "--out-indices", "0,1", "--dtype", "float16", "--compression", "zstd", "--quiet"]  # fmt: skip
    stored = {}
    for level in ("", "-9", "9"):
        out = tmp_path / f"z{level}.h5"
        run(*base, "-o", str(out), env={"FEATDUMP_ZSTD_LEVEL": level}, check=True)
        with h5py.File(out) as h5:
            ds = h5["features"][next(iter(h5["features"]))]
            code, _, values, _ = ds.id.get_create_plist().get_filter(0)
            assert (code, values) == (32015, ((int(level) if level else -3) % (1 << 32),))
            stored[level] = sum(d.id.get_storage_size() for d in h5["features"].values())
            if level:
                with h5py.File(tmp_path / "z.h5") as ref:
                    for name in ref["features"]:
                        np.testing.assert_array_equal(ref["features"][name][:], h5["features"][name][:])
    assert stored["9"] < stored[""] < stored["-9"]
    shown = run("show", str(tmp_path / "z.h5"), "--json", check=True).stdout
    assert "zstd:-3" in shown
    for bad in ("0", "fast", "23", "-51"):
        proc = run(*base, "-o", str(tmp_path / "bad.h5"), env={"FEATDUMP_ZSTD_LEVEL": bad})
        assert proc.returncode == 2, proc.stderr
        assert "FEATDUMP_ZSTD_LEVEL" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad.h5").exists()


# --------------------------------------------------------------------------- resume offsets, as a property


def _fake_layers():
    from featdump.model.layers import LayerInfo

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
        store.append(Rows(feats, [f"p{i}" for i in good], [Failure(i, f"p{i}", "bad") for i in chunk if not ok[i]], start + b0 + len(chunk)))
    return store


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@pytest.mark.slow
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
