"""Whole chunks written directly (featdump/store/chunks.py): the file h5py reads is the one its own
writes make (same values, same filters, the same chunk bytes), for every codec and dtype, pooled and
map layers, odd batch sizes, commits at any row, several preparing threads, and resume after a kill."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from featdump.data.batching import Rows
from featdump.model.layers import LayerInfo

CODECS = ["none", "gzip", "lzf", "zstd"]


def _layers() -> list[LayerInfo]:
    return [
        LayerInfo("map", "map", 1, 97, 4, (97, 64, 64)),  # split along channels, last chunk padded
        LayerInfo("small", "small", 2, 4, 8, (4, 3, 3)),  # many rows per chunk
        LayerInfo("vec", "vec", 3, 40, 16, (40,)),  # many rows per chunk
    ]


def _batch(rng: np.random.Generator, n: int, dtype: str) -> list[np.ndarray]:
    out = []
    for layer in _layers():
        a = rng.standard_normal((n, *layer.shape)).astype(np.float32)
        a[a < 0] = 0  # post-ReLU-like: compressible
        out.append(a.astype(dtype))
    return out


def _write(path: Path, *, codec: str, dtype: str, sizes: list[int], threads: int = 1, commit_at=(), seed: int = 0):
    from featdump.store.sink import Store

    rng = np.random.default_rng(seed)
    store = Store.create(path, {"format": "featdump"}, _layers(), pool="none", dtype=dtype, compression=codec)
    store.write_threads = threads
    done = 0
    for k, n in enumerate(sizes):
        store.append(Rows(_batch(rng, n, dtype), [f"p{done + i}" for i in range(n)], [], done + n))
        done += n
        if k in commit_at:
            store.commit()
    store.finish()
    store.close()


def _h5py_reference(path: Path, like: h5py.File, *, codec: str, dtype: str, sizes: list[int], seed: int = 0) -> None:
    """The same rows appended by h5py's own ``ds[a:b] = arr`` into datasets with the Store's chunk
    shapes and the codec's filters (featdump/store/format.py)."""
    from featdump.store.format import compression_kwargs

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        sets = [
            h5.create_dataset(f"features/{layer.name}", shape=(0, *layer.shape), maxshape=(None, *layer.shape), dtype=dtype,
                              chunks=like["features"][layer.name].chunks, **compression_kwargs(codec, dtype))
            for layer in _layers()
        ]  # fmt: skip
        done = 0
        for n in sizes:
            for ds, arr in zip(sets, _batch(rng, n, dtype), strict=True):
                ds.resize(done + n, axis=0)
                ds[done : done + n] = arr
            done += n


def _chunk_bytes(ds: h5py.Dataset) -> dict[tuple[int, ...], tuple[int, bytes]]:
    out = {}
    for i in range(ds.id.get_num_chunks()):
        info = ds.id.get_chunk_info(i)
        out[tuple(info.chunk_offset)] = ds.id.read_direct_chunk(info.chunk_offset)
    return out


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_direct_chunks_equal_h5py_writes(tmp_path: Path, codec: str, dtype: str) -> None:
    import hdf5plugin  # noqa: F401

    sizes = [3, 1, 5, 2, 7]  # 18 rows: partial chunks everywhere for the small layers
    _write(tmp_path / "new.h5", codec=codec, dtype=dtype, sizes=sizes, commit_at=(1, 2))
    _write(tmp_path / "par.h5", codec=codec, dtype=dtype, sizes=sizes, threads=3)
    with h5py.File(tmp_path / "new.h5") as new:
        _h5py_reference(tmp_path / "ref.h5", new, codec=codec, dtype=dtype, sizes=sizes)
    with h5py.File(tmp_path / "ref.h5") as ref, h5py.File(tmp_path / "new.h5") as new, h5py.File(tmp_path / "par.h5") as par:
        for name in ref["features"]:
            a, b, c = ref["features"][name], new["features"][name], par["features"][name]
            assert (b.shape, b.chunks, b.dtype, b.compression, b.shuffle) == (a.shape, a.chunks, a.dtype, a.compression, a.shuffle)
            assert b.id.get_create_plist().get_filter(0) == a.id.get_create_plist().get_filter(0) if codec != "none" else True
            np.testing.assert_array_equal(a[:], b[:])
            np.testing.assert_array_equal(a[:], c[:])
            if name == "map":  # whole chunks: the very bytes HDF5's own pipeline wrote
                assert _chunk_bytes(b) == _chunk_bytes(a)
                assert _chunk_bytes(c) == _chunk_bytes(a)
        assert [p.decode() for p in new["paths"][:]] == [f"p{i}" for i in range(sum(sizes))]


def test_partial_chunks_are_in_every_commit(tmp_path: Path) -> None:
    """A reader of a committed (unfinished) file sees every row, including rows of unfilled chunks."""
    from featdump.store.sink import Store

    rng = np.random.default_rng(1)
    path = tmp_path / "f.h5"
    store = Store.create(path, {"format": "featdump"}, _layers(), pool="none", dtype="float32", compression="zstd")
    batches = [_batch(rng, n, "float32") for n in (2, 3)]
    store.append(Rows(batches[0], ["a", "b"], [], 2))
    store.commit()
    from featdump.store.committed import open_committed

    with open_committed(path) as h5:
        for layer, arr in zip(_layers(), batches[0], strict=True):
            np.testing.assert_array_equal(h5["features"][layer.name][:], arr)
    store.append(Rows(batches[1], ["c", "d", "e"], [], 5))
    store.finish()
    store.close()
    with h5py.File(path) as h5:
        for layer, a, b in zip(_layers(), *batches, strict=True):
            np.testing.assert_array_equal(h5["features"][layer.name][:], np.concatenate([a, b]))


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_resume_after_a_kill_mid_chunk(tmp_path: Path, codec: str) -> None:
    """Killed with unfilled chunks both committed and not: resume reads the tail back, and the
    finished file equals an uninterrupted run."""
    from featdump.store.sink import Store

    os.environ["FEATDUMP_COMMIT_SECONDS"] = "3600"
    try:
        sizes = [3, 2, 4, 1, 5]
        _write(tmp_path / "clean.h5", codec=codec, dtype="float16", sizes=sizes)
        path = tmp_path / "killed.h5"
        pid = os.fork()
        if pid == 0:
            try:
                from featdump.store.sink import Store as S

                rng = np.random.default_rng(0)
                store = S.create(path, {"format": "featdump"}, _layers(), pool="none", dtype="float16", compression=codec)
                store.write_threads = 2
                done = 0
                for k, n in enumerate(sizes[:4]):
                    store.append(Rows(_batch(rng, n, "float16"), [f"p{done + i}" for i in range(n)], [], done + n))
                    done += n
                    if k == 1:
                        store.commit()  # 5 rows committed; batches 3 and 4 written, not committed
            finally:
                os._exit(9)
        os.waitpid(pid, 0)
        store = Store.resume(path, {"format": "featdump"}, _layers())
        assert store.progress.num_images == 5
        rng = np.random.default_rng(0)
        for n in sizes[:2]:
            _batch(rng, n, "float16")  # the rows already committed
        done = 5
        for n in sizes[2:]:
            store.append(Rows(_batch(rng, n, "float16"), [f"p{done + i}" for i in range(n)], [], done + n))
            done += n
        store.finish()
        store.close()
    finally:
        del os.environ["FEATDUMP_COMMIT_SECONDS"]
    with h5py.File(tmp_path / "clean.h5") as a, h5py.File(path) as b:
        for name in a["features"]:
            np.testing.assert_array_equal(a["features"][name][:], b["features"][name][:])
        assert list(a["paths"][:]) == list(b["paths"][:])


def test_unknown_filters_fall_back_to_h5py(tmp_path: Path) -> None:
    from featdump.store.chunks import ChunkWriter

    with h5py.File(tmp_path / "f.h5", "w") as h5:
        ds = h5.create_dataset("x", shape=(0, 8), maxshape=(None, 8), chunks=(2, 8), dtype="f4", fletcher32=True)
        writer = ChunkWriter([ds], threads=2)
        assert not writer.lanes["/x"].direct and writer.lanes["/x"].codec.names == ["fletcher32"]
        ds.resize(3, axis=0)
        writer.write([(ds, np.arange(24, dtype="f4").reshape(3, 8), 0)])
        writer.flush()
        writer.close()
        np.testing.assert_array_equal(ds[:], np.arange(24, dtype="f4").reshape(3, 8))
