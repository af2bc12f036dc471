"""The one VDS source resolver (featdump.store.vds): HDF5_VDS_PREFIX, missing sources, fill values."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from featdump.store.vds import check_sources, missing_sources, source_path


def _source(path: Path, rows: int, value: float) -> None:
    """A minimal featdump shard: virtual sources must be featdump files (docs/safety.md)."""
    text = h5py.string_dtype()
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "featdump"
        h5.attrs["num_images"] = rows
        h5.create_dataset("paths", data=[f"{i}.jpg" for i in range(rows)], dtype=text)
        h5.create_dataset("failed/paths", shape=(0,), dtype=text)
        h5.create_dataset("failed/errors", shape=(0,), dtype=text)
        h5.create_dataset("features/x", data=np.full((rows, 2), value, dtype=np.float32))


def _virtual(path: Path, sources: list[tuple[str, int]], **kwargs: object) -> None:
    total = sum(n for _, n in sources)
    layout = h5py.VirtualLayout(shape=(total, 2), dtype=np.float32)
    at = 0
    for name, n in sources:
        layout[at : at + n] = h5py.VirtualSource(name, "features/x", shape=(n, 2))
        at += n
    with h5py.File(path, "w", libver="earliest") as h5:
        h5.create_group("features").create_virtual_dataset("x", layout, **kwargs)


@pytest.mark.parametrize(("fill", "expect"), [(np.nan, "nan"), (0.0, "zero"), (None, "zero")])
def test_missing_source_reads_as_the_fill_value(tmp_path: Path, fill: float | None, expect: str) -> None:
    """What h5py really returns for the rows of a missing source: the fill value, silently (0 unset)."""
    _source(tmp_path / "a.h5", 2, 1.0)
    kwargs = {} if fill is None else {"fillvalue": fill}
    _virtual(tmp_path / "v.h5", [("a.h5", 2), ("b.h5", 3)], **kwargs)
    with h5py.File(tmp_path / "v.h5", "r") as h5:
        rows = h5["features/x"][:]
    assert (rows[:2] == 1.0).all()
    assert np.isnan(rows[2:]).all() if expect == "nan" else (rows[2:] == 0).all()
    assert missing_sources(tmp_path / "v.h5") == [f"{(tmp_path / 'b.h5').resolve()}: file not found"]


def test_featdump_merge_sets_a_nan_fill_value() -> None:
    """The docs say merged rows of a missing shard read as NaN: merge must keep passing fillvalue=nan."""
    import inspect

    from featdump.store import merge

    assert "create_virtual_dataset(name, layout, fillvalue=np.nan)" in inspect.getsource(merge._write)


def test_prefix_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _source(elsewhere / "a.h5", 2, 1.0)
    _virtual(tmp_path / "v.h5", [("a.h5", 2)], fillvalue=np.nan)
    monkeypatch.delenv("HDF5_VDS_PREFIX", raising=False)
    assert missing_sources(tmp_path / "v.h5") == [f"{(tmp_path / 'a.h5').resolve()}: file not found"]
    monkeypatch.setenv("HDF5_VDS_PREFIX", str(elsewhere))
    assert source_path(tmp_path / "v.h5", "a.h5") == elsewhere / "a.h5"
    assert missing_sources(tmp_path / "v.h5") == []
    with h5py.File(tmp_path / "v.h5", "r") as h5:  # and HDF5 itself reads from there
        assert (h5["features/x"][:] == 1.0).all()
    monkeypatch.setenv("HDF5_VDS_PREFIX", "${ORIGIN}/elsewhere")
    assert source_path(tmp_path / "v.h5", "a.h5") == elsewhere / "a.h5"


def test_source_path_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HDF5_VDS_PREFIX", raising=False)
    vds = tmp_path / "v.h5"
    assert source_path(vds, ".") == vds.resolve()
    assert source_path(vds, "/abs/s.h5") == Path("/abs/s.h5")
    assert source_path(vds, "sub/s.h5") == tmp_path.resolve() / "sub" / "s.h5"


def test_short_source_is_reported(tmp_path: Path) -> None:
    _source(tmp_path / "a.h5", 1, 1.0)
    _virtual(tmp_path / "v.h5", [("a.h5", 3)], fillvalue=np.nan)
    [problem] = check_sources(tmp_path / "v.h5")
    assert problem.reason == "holds 1 rows of features/x, the merged file maps 3"
