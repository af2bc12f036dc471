"""Reading ragged layers: numpy per row at its own grid, cells, .torch() rows, featdump.collate's
padding and mask, resize= and pool= uniform, DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import raggedkit as rk
import torch

import featdump


@pytest.fixture
def ragged(tmp_path: Path) -> Path:
    return rk.make(tmp_path / "r.h5", 10)


def test_numpy_rows_at_their_own_grid(ragged: Path) -> None:
    with featdump.open(ragged) as f:
        assert f.numpy("map", 4).shape == (rk.C, *rk.grid(4))
        np.testing.assert_array_equal(f.numpy("map", 4), rk.row_map(4))
        np.testing.assert_array_equal(f.numpy("map", -1), rk.row_map(9))
        several = f.numpy("map", [8, 1, 8])  # any order, duplicates
        assert isinstance(several, list) and [m.shape[1:] for m in several] == [rk.grid(8), rk.grid(1), rk.grid(8)]
        for got, i in zip(several, [8, 1, 8], strict=True):
            np.testing.assert_array_equal(got, rk.row_map(i))
        same = f.numpy("map", [0, 5])  # equal grids: one array
        assert isinstance(same, np.ndarray) and same.shape == (2, rk.C, *rk.grid(0))
        assert len(f.numpy("map")) == 10 and f.numpy("map", []) == []
        cells = f.cells("map")
        assert cells.shape == (10, 3) and cells.dtype == np.int64
        assert [tuple(c[1:]) for c in cells] == [rk.grid(i) for i in range(10)]
        np.testing.assert_array_equal(f.numpy("vec", [1, 2]), [rk.row_vec(1), rk.row_vec(2)])
        with pytest.raises(KeyError, match="fixed layer"):
            f.cells("vec")
        with pytest.raises(IndexError):
            f.numpy("map", 10)
        for rows in (np.ones(10, bool), [True, False], 1.5):  # no silent rows 1, 0, 1, ...
            with pytest.raises(TypeError, match="whole numbers"):
                f.numpy("map", rows)
            with pytest.raises(TypeError, match="whole numbers"):
                f.numpy("vec", rows)


def test_collate_pads_and_masks_exactly_the_cells(ragged: Path) -> None:
    ds = featdump.open(ragged).torch()
    item = ds[5]
    assert item["map"].shape == (rk.C, *rk.grid(5)) and item["map.mask"].all() and item["vec"].shape == (6,)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=featdump.collate, num_workers=2)
    rows = 0
    for batch in loader:
        b = len(batch["row"])
        grids = [rk.grid(int(r)) for r in batch["row"]]
        hmax, wmax = max(g[0] for g in grids), max(g[1] for g in grids)
        assert batch["map"].shape == (b, rk.C, hmax, wmax) and batch["map.mask"].shape == (b, hmax, wmax)
        assert batch["map.mask"].dtype == torch.bool
        for k, (row, (h, w)) in enumerate(zip(batch["row"].tolist(), grids, strict=True)):
            want = torch.zeros(hmax, wmax, dtype=torch.bool)
            want[:h, :w] = True
            assert torch.equal(batch["map.mask"][k], want)
            np.testing.assert_array_equal(batch["map"][k, :, :h, :w].numpy(), rk.row_map(row))
            assert not batch["map"][k][:, ~want].any()
        rows += b
    assert rows == 10


def test_resize_and_pool_give_uniform_tensors(ragged: Path) -> None:
    f = featdump.open(ragged)
    resized = torch.utils.data.DataLoader(f.torch("map", resize=(4, 6)), batch_size=5, collate_fn=featdump.collate)
    batch = next(iter(resized))
    assert batch["map"].shape == (5, rk.C, 4, 6) and "map.mask" not in batch
    want = torch.nn.functional.interpolate(torch.from_numpy(rk.row_map(1))[None], size=(4, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(batch["map"][1], want[0])
    pooled = f.torch(["map"], pool="max", dtype="float16")
    assert pooled[3]["map"].shape == (rk.C,) and pooled[3]["map"].dtype == torch.float16
    torch.testing.assert_close(pooled[3]["map"], torch.from_numpy(rk.row_map(3).max(axis=(1, 2))).half())
    f.close()
