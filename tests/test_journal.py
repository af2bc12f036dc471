"""The redo journal: hypothesis drives it with random writes, truncations, commits and crashes
against a plain bytes model; readers see the last commit after a kill inside a commit's apply."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PAGE = 4096
ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 6 * PAGE), st.integers(1, 2 * PAGE + 7), st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.integers(0, 7 * PAGE)),
        st.tuples(st.just("commit")),
        st.tuples(st.just("crash")),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, durable=st.booleans())
def test_journal_model(tmp_path_factory, ops, durable) -> None:
    """Reads always see the logical bytes; after a crash, the view and the recovered file equal the
    last commit exactly; nothing past it survives."""
    from featdump.store.journal import JournaledFile

    path = tmp_path_factory.mktemp("j") / "f.bin"
    jf = JournaledFile.create(path, durable=durable)
    model = bytearray()
    committed = b""
    for op in ops:
        if op[0] == "write":
            _, off, n, byte = op
            data = bytes([byte]) * n
            jf.seek(off)
            jf.write(data)
            if len(model) < off + n:
                model.extend(bytes(off + n - len(model)))
            model[off : off + n] = data
        elif op[0] == "truncate":
            jf.truncate(op[1])
            del model[op[1] :]
            model.extend(bytes(op[1] - len(model)))
        elif op[0] == "commit":
            jf.commit()
            committed = bytes(model)
        else:  # the process dies: no more calls, its descriptors close
            os.close(jf.fd)
            jf.lock.release(remove=False)
            jf = JournaledFile.open(path, durable=durable)
            view = jf.view()
            view.seek(0)
            assert view.read(len(committed) + 100) == committed
            jf.recover()
            assert path.read_bytes() == committed
            model = bytearray(committed)
        jf.seek(0)
        assert jf.read(len(model) + 50) == bytes(model)
    jf.commit()
    jf.close()
    assert path.read_bytes() == bytes(model)
    assert not Path(f"{path}-journal").exists()


def test_readers_see_the_last_commit_after_a_kill_inside_apply(tmp_path: Path, monkeypatch) -> None:
    """The one window where the file itself is half-updated: a kill between a commit's redo block
    and the end of its apply. open_committed (for featdump's readers) and --resume see through it."""
    import h5py

    from featdump.data.batching import Rows
    from featdump.model.layers import LayerInfo
    from featdump.store import redo
    from featdump.store.committed import open_committed
    from featdump.store.sink import Store

    monkeypatch.setenv("FEATDUMP_COMMIT_SECONDS", "0")
    layers = [LayerInfo("a", "a", 1, 4, 4, (4, 8, 8))]
    path = tmp_path / "f.h5"

    def batches(store, first, last):
        for b in range(first, last):
            rows = [np.full((4, 8, 8), b * 3 + i, np.float32) for i in range(3)]
            store.append(Rows([np.stack(rows)], [f"p{b * 3 + i}" for i in range(3)], [], (b + 1) * 3))

    pid = os.fork()
    if pid == 0:  # dies half-way through applying the commit of batch 4
        try:
            calls = {"n": 0}
            real = redo.Redo.apply

            def half(self, fd):
                calls["n"] += 1
                if calls["n"] == 5:
                    for offset, data in self.pages[: max(1, len(self.pages) // 2)]:
                        redo.pwrite_full(fd, data, offset)
                    os._exit(9)
                real(self, fd)

            redo.Redo.apply = half
            store = Store.create(path, {"format": "featdump"}, layers, pool="none", dtype="float32", compression="none")
            batches(store, 0, 10)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9
    with open_committed(path) as f:  # commit 5 = the 4th batch: its redo block is complete
        assert int(f.attrs["num_images"]) == 12 and not f.attrs["complete"]
        assert [p.decode() for p in f["paths"][:]] == [f"p{i}" for i in range(12)]
        assert f["features/a"][11].max() == 11
    store = Store.resume(path, {"format": "featdump"}, layers)
    batches(store, store.progress.inputs_done // 3, 10)
    store.finish()
    store.close()
    with h5py.File(path, "r") as f:
        assert [p.decode() for p in f["paths"][:]] == [f"p{i}" for i in range(30)]
        assert np.array_equal(f["features/a"][:, 0, 0, 0], np.arange(30, dtype=np.float32))
    with open_committed(path) as f:  # no journal left: the plain file
        assert f.attrs["complete"]


def test_new_bytes_are_handed_to_writeback_early(tmp_path: Path, monkeypatch) -> None:
    """Bytes past the last commit start their writeback every WRITEBACK_BYTES (the real
    sync_file_range runs); bytes below it (held pages) never do; the file is unchanged by it."""
    from featdump.store import journal, redo

    calls: list[tuple[int, int]] = []

    def record(fd: int, offset: int, size: int) -> None:
        calls.append((offset, size))
        redo.start_writeback(fd, offset, size)  # the real call, on a real descriptor

    monkeypatch.setattr(journal, "WRITEBACK_BYTES", 4 * PAGE)
    monkeypatch.setattr(journal, "start_writeback", record)
    path = tmp_path / "f.bin"
    jf = journal.JournaledFile.create(path)
    data = np.random.default_rng(0).integers(0, 256, 10 * PAGE, dtype=np.uint8).tobytes()
    for i in range(10):
        jf.write(data[i * PAGE : (i + 1) * PAGE])
    assert calls == [(0, 4 * PAGE), (4 * PAGE, 4 * PAGE)]  # 2 pages wait for the next kick or the commit
    jf.commit()
    jf.seek(PAGE)
    jf.write(b"x" * (4 * PAGE))  # below L: held in memory, nothing to write back
    jf.seek(8 * PAGE)
    jf.write(b"y" * (6 * PAGE))  # 2 pages below L, 4 past it
    assert calls[2:] == [(10 * PAGE, 4 * PAGE)]
    jf.commit()
    jf.close()
    assert path.read_bytes() == data[:PAGE] + b"x" * (4 * PAGE) + data[5 * PAGE : 8 * PAGE] + b"y" * (6 * PAGE)


def test_writeback_off_for_non_durable_files(tmp_path: Path, monkeypatch) -> None:
    from featdump.store import journal

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(journal, "WRITEBACK_BYTES", PAGE)
    monkeypatch.setattr(journal, "start_writeback", lambda fd, o, n: calls.append((o, n)))
    jf = journal.JournaledFile.create(tmp_path / "f.bin", durable=False)
    jf.write(b"z" * (3 * PAGE))
    jf.commit()
    jf.close()
    assert calls == []
