"""Ragged layers in the file: /features/<name> (cells, C) row after row, /cells/<name> start, h, w,
format_version 2; float16, compression, resume after a kill, and a crafted /cells refused."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import raggedkit as rk

from conftest import run


@pytest.mark.parametrize(("dtype", "compression"), [("float32", "none"), ("float16", "zstd"), ("float32", "gzip")])
def test_ragged_rows_are_cells_row_after_row(tmp_path: Path, dtype: str, compression: str) -> None:
    import hdf5plugin  # noqa: F401 - zstd files need it

    path = rk.make(tmp_path / "r.h5", 11, dtype=dtype, compression=compression)
    with h5py.File(path) as h5:
        assert h5.attrs["format_version"] == 2
        ds, cells = h5["features/map"], h5["cells/map"][:]
        assert ds.attrs["layout"] == "ragged" and ds.dtype == np.dtype(dtype)
        assert ds.chunks[1] == rk.C and ds.shape[1:] == (rk.C,)
        assert [tuple(c[1:]) for c in cells] == [rk.grid(i) for i in range(11)]
        assert cells[0, 0] == 0 and ds.shape[0] == cells[-1, 0] + cells[-1, 1] * cells[-1, 2]
        for i, (start, h, w) in enumerate(cells):
            got = ds[start : start + h * w].T.reshape(rk.C, h, w)
            np.testing.assert_array_equal(got, rk.row_map(i).astype(dtype))
        np.testing.assert_array_equal(h5["features/vec"][:], np.stack([rk.row_vec(i) for i in range(11)]))
        assert h5["features/vec"].attrs["layout"] == "NCHW"  # (as fixed (C,) layers were stored)


def test_pooled_or_fixed_files_keep_format_version_1(tmp_path: Path) -> None:
    """A pooled ragged-marked layer stays (N, C); with no ragged layer the file is format_version 1."""
    from featdump.store.sink import Store

    path = tmp_path / "p.h5"
    store = Store.create(path, {**rk.ATTRS, "format_version": 1}, rk.layers(), pool="avg", dtype="float32", compression="none")
    store.append(_pooled(rk.rows(0, 2)))
    store.finish()
    store.close()
    with h5py.File(path) as h5:
        assert h5.attrs["format_version"] == 1 and "cells" not in h5
        assert h5["features/map"].shape == (2, rk.C) and h5["features/map"].attrs["layout"] == "NC"


def _pooled(rows: rk.Rows) -> rk.Rows:
    rows.features = [np.stack([m.mean(axis=(1, 2)) for m in rows.features[0]]), rows.features[1]]
    return rows


@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_resume_after_kill_gives_the_rows_of_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_after: int) -> None:
    """A writer killed after some batches (committed or not, a chunk tail left in memory) resumes to
    exactly the cells and rows of one uninterrupted run."""
    from featdump.store.sink import NothingCommitted, Store

    clean = rk.make(tmp_path / "clean.h5", 14, batch=4, dtype="float16", compression="zstd")
    path = tmp_path / "killed.h5"
    pid = os.fork()
    if pid == 0:  # the child dies mid-run, without any cleanup
        try:
            store = rk.write(path, 14, batch=4, dtype="float16", compression="zstd", stop_after=crash_after - 1)
            store.commit()  # the first crash_after - 1 batches are committed, the next one is not
            store.commit_seconds = 3600
            store.append(rk.rows(store.progress.inputs_done, min(14, store.progress.inputs_done + 4)))
            store.h5.flush()
        finally:
            os._exit(9)
    os.waitpid(pid, 0)
    try:
        store = Store.resume(path, rk.ATTRS, rk.layers())
        assert store.progress.num_images == 4 * (crash_after - 1)
    except NothingCommitted:
        store = None
    rk.write(path, 14, batch=4, dtype="float16", compression="zstd", store=store)
    store = store or Store.resume(path, rk.ATTRS, rk.layers())
    store.finish()
    store.close()
    import hdf5plugin  # noqa: F401

    with h5py.File(clean) as a, h5py.File(path) as b:
        for key in ("features/map", "cells/map", "features/vec", "paths", "geometry"):
            np.testing.assert_array_equal(a[key][:], b[key][:])


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda h5: h5["cells/map"].__setitem__(3, [1, 2, 2]), "does not list rows of cells one after another"),
        (lambda h5: h5["cells/map"].__setitem__(9, [h5["cells/map"][9][0], 50, 50]), "needs"),
        (lambda h5: h5["cells/map"].__setitem__(9, [h5["cells/map"][9][0], 2**32, 2**32]), "needs"),  # h * w wraps to 0 in int64
        (lambda h5: h5.__delitem__("cells/map"), "no /cells/map dataset"),
    ],
)
def test_crafted_cells_are_refused(tmp_path: Path, edit, words: str) -> None:
    path = rk.make(tmp_path / "r.h5", 10)
    with h5py.File(path, "r+") as h5:
        edit(h5)
    proc = run("show", str(path))
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
