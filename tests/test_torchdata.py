"""``FeatureFile.torch()``: a Dataset over stored rows, with DataLoader workers (fork and spawn) on
finished, partial and merged (virtual) files; ids; resize/pool against torch's own functions; and
featdump.open next to plain h5py in one process."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import featdump
from featdump.errors import FeatdumpError

from readkit import feature_files

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    return feature_files(tmp_path_factory, photos)


def _check_batches(path: Path, loader: Any) -> int:
    seen = 0
    with featdump.open(path) as ff:
        for batch in loader:
            for k, row in enumerate(batch["row"].tolist()):
                assert batch["path"][k] == ff.paths[row]
                for layer in ff.layers:
                    np.testing.assert_array_equal(batch[layer][k].numpy(), ff.numpy(layer, row))
                seen += 1
    return seen


@pytest.mark.parametrize("kind", ["finished", "partial", "merged"])
@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_dataloader_workers_read_every_row_like_numpy(files: dict[str, Path], kind: str, start: str) -> None:
    from torch.utils.data import DataLoader

    with featdump.open(files[kind]) as ff:
        ds = ff.torch()
        n = ff.num_images
        ds[0]  # the parent reads first: a forked worker must open its own handle, not share this one
    assert len(ds) == n == (5 if kind == "partial" else 8)
    loader = DataLoader(
        ds, batch_size=3, shuffle=True, num_workers=2, multiprocessing_context=start,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert _check_batches(files[kind], loader) == n


def test_rows_indices_mask_and_errors(files: dict[str, Path]) -> None:
    with featdump.open(files["finished"]) as ff:
        ds = ff.torch("layer2", rows=[6, -1, 2, 2])
        assert [ds[i]["row"] for i in range(len(ds))] == [6, 7, 2, 2]
        assert set(ds[0]) == {"layer2", "path", "row"}  # no ids in this file
        items = ds.__getitems__([3, 0, 1])
        assert [it["row"] for it in items] == [2, 6, 7]
        np.testing.assert_array_equal(torch.stack([it["layer2"] for it in items]).numpy(), ff.numpy("layer2", [2, 6, 7]))
        mask = np.zeros(8, dtype=bool)
        mask[[1, 4]] = True
        assert ff.torch(rows=mask).rows.tolist() == [1, 4]
        assert ff.torch(rows=slice(2, 8, 3)).rows.tolist() == [2, 5]
        with pytest.raises(IndexError, match="out of range"):
            ff.torch(rows=[8])
        with pytest.raises(ValueError, match="one entry per committed row"):
            ff.torch(rows=np.ones(3, dtype=bool))
        with pytest.raises(KeyError, match="layer1, layer2"):
            ff.torch("layer9")
        with pytest.raises(ValueError, match="pool"):
            ff.torch(pool="median")
        with pytest.raises(IndexError):
            ds[4]


def test_dtype_resize_pool_equal_torch_functions(files: dict[str, Path]) -> None:
    rows = [5, 0, 3]
    with featdump.open(files["finished"]) as ff:
        x1 = torch.from_numpy(ff.numpy("layer1", rows))
        x2 = torch.from_numpy(ff.numpy("layer2", rows))
        half = ff.torch(rows=rows, dtype=torch.float16)
        assert half[0]["layer1"].dtype == torch.float16
        torch.testing.assert_close(half[1]["layer2"], x2[1].half(), rtol=0, atol=0)
        resized = ff.torch(rows=rows, resize=(12, 20))
        for k in range(3):
            want1 = F.interpolate(x1[k : k + 1], size=(12, 20), mode="bilinear", align_corners=False)[0]
            want2 = F.interpolate(x2[k : k + 1], size=(12, 20), mode="bilinear", align_corners=False)[0]
            torch.testing.assert_close(resized[k]["layer1"], want1)
            torch.testing.assert_close(resized[k]["layer2"], want2)
        avg = ff.torch(rows=rows, pool="avg")
        mx = ff.torch(rows=rows, pool="max", resize=(3, 3), dtype="float16")
        for k in range(3):
            torch.testing.assert_close(avg[k]["layer2"], x2[k].mean(dim=(1, 2)))
            assert avg[k]["layer1"].shape == (64,)
            want = F.interpolate(x1[k : k + 1], size=(3, 3), mode="bilinear", align_corners=False)[0].amax(dim=(1, 2))
            torch.testing.assert_close(mx[k]["layer1"], want.half())


def test_token_layers_pool_over_patch_tokens_only(files: dict[str, Path]) -> None:
    with featdump.open(files["tokens"]) as ff:
        assert ff.attrs("blocks.1")["num_prefix_tokens"] == 1
        x = torch.from_numpy(ff.numpy("blocks.1", 4))  # (T, D) = (1 + 2x2, 192)
        ds = ff.torch(pool="avg", resize=(7, 7))  # resize leaves token layers alone
        torch.testing.assert_close(ds[4]["blocks.1"], x[1:].mean(dim=0))
        torch.testing.assert_close(ff.torch(pool="max")[4]["blocks.1"], x[1:].amax(dim=0))
        assert ff.torch()[4]["blocks.1"].shape == (5, 192)


@pytest.mark.slow
def test_ids_when_the_file_has_them(files: dict[str, Path]) -> None:
    with featdump.open(files["ids"]) as ff:
        ds = ff.torch("layer1", rows=[3, 6])
    assert [ds[0]["id"], ds[1]["id"]] == ["key-003", "key-006"]
    from torch.utils.data import DataLoader

    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")))
    assert batch["id"] == ["key-003", "key-006"] and batch["row"].tolist() == [3, 6]


def test_pickles_without_the_handle_and_transform_runs_last(files: dict[str, Path]) -> None:
    with featdump.open(files["merged"]) as ff:
        ds = ff.torch("layer2", pool="avg", transform=_add_norm)
        want = ff.numpy("layer2", 6).mean(axis=(1, 2))
    first = ds[6]
    assert ds._state is not None
    again = pickle.loads(pickle.dumps(ds))
    assert again._state is None
    item = again[6]
    np.testing.assert_allclose(item["layer2"].numpy(), want, rtol=1e-6)
    assert item["norm"] == pytest.approx(float(np.linalg.norm(want)), rel=1e-5)
    assert first["norm"] == item["norm"]
    ds.close()


def _add_norm(item: dict[str, Any]) -> dict[str, Any]:
    item["norm"] = float(item["layer2"].norm())
    return item


def test_missing_virtual_source_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("m.h5", "s.shard-00000-of-00002.h5"):
        shutil.copy(files["merged"].parent / name, tmp_path / name)
    with featdump.open(tmp_path / "m.h5") as ff, pytest.raises(FeatdumpError, match="missing"):
        ff.torch()


def _loader(ds: Any, workers: int, start: str) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=4, num_workers=workers, multiprocessing_context=start if workers else None)


def _refused(loader: Any, match: str) -> None:
    """Reading ``loader`` raises FeatdumpError. torch's reraise keeps the error in a frame of its own
    traceback, so the iterator is left to the garbage collector, which tears its queues down before
    it shuts the workers down: 5 s a worker. Clearing the frames shuts them down at once."""
    import traceback

    with pytest.raises(FeatdumpError, match=match) as caught:
        list(loader)
    traceback.clear_frames(caught.tb)


@pytest.mark.parametrize(("workers", "start"), [(0, None), (2, "fork"), pytest.param(2, "spawn", marks=pytest.mark.slow)])
def test_a_source_gone_after_the_dataset_was_made_is_an_error_naming_it(
    files: dict[str, Path], tmp_path: Path, workers: int, start: str
) -> None:
    """Never rows of NaN: HDF5 reads a gone source's rows as the fill value."""
    for name in ("m.h5", "s.shard-00000-of-00002.h5", "s.shard-00001-of-00002.h5"):
        shutil.copy(files["merged"].parent / name, tmp_path / name)
    with featdump.open(tmp_path / "m.h5") as ff:
        ds = ff.torch()
        ds[0]  # the parent has read (and holds the file open)
    (tmp_path / "s.shard-00001-of-00002.h5").unlink()
    _refused(_loader(ds, workers, start), "s.shard-00001-of-00002.h5")


@pytest.mark.parametrize(("workers", "start"), [(0, None), (2, "fork"), pytest.param(2, "spawn", marks=pytest.mark.slow)])
def test_a_file_replaced_after_the_dataset_was_made_is_refused(
    files: dict[str, Path], tmp_path: Path, workers: int, start: str
) -> None:
    path = tmp_path / "f.h5"
    shutil.copy(files["finished"], path)
    with featdump.open(path) as ff:
        ds = ff.torch()
        ds[0]
    shutil.copy(files["finished"], tmp_path / "new.h5")  # the same bytes, another file
    (tmp_path / "new.h5").replace(path)
    _refused(_loader(ds, workers, start), "changed after this dataset was made")
    assert len(list(_loader(featdump.open(path).torch(), workers, start))) == 2  # made again: it reads


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["finished", "merged"])
def test_featdump_open_and_plain_h5py_together_in_either_order(files: dict[str, Path], kind: str) -> None:
    code = (
        "import sys, h5py, featdump\n"
        "p = sys.argv[1]\n"
        "if sys.argv[2] == 'featdump-first':\n"
        "    f = featdump.open(p); h = h5py.File(p)\n"
        "else:\n"
        "    h = h5py.File(p); f = featdump.open(p)\n"
        "print(f.numpy('layer2', 1).shape == h['features/layer2'][1].shape, f.torch()[1]['row'])\n"
    )
    for order in ("featdump-first", "h5py-first"):
        proc = subprocess.run([sys.executable, "-c", code, str(files[kind]), order], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["True", "1"]


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_hands_out_in_order_batches_without_a_copy(files: dict[str, Path], workers: int) -> None:
    from torch.utils.data import DataLoader, default_collate

    with featdump.open(files["merged"]) as ff:
        ds = ff.torch()
        want = ff.numpy("layer1")
    batches = list(DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=ds.collate))
    assert [b["row"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    np.testing.assert_array_equal(torch.cat([b["layer1"] for b in batches]).numpy(), want)
    items = ds.__getitems__([2, 3, 4])
    batch = ds.collate(items)
    assert batch["layer1"].data_ptr() == items[0]["layer1"].data_ptr()  # a view of the block read
    assert batch["path"] == default_collate(items)["path"]
    mixed = ds.collate(ds.__getitems__([4, 2, 3]))  # not in file order: stacked, like default_collate
    np.testing.assert_array_equal(mixed["layer2"].numpy(), ff_numpy(files, [4, 2, 3]))


def ff_numpy(files: dict[str, Path], rows: list[int]) -> np.ndarray:
    with featdump.open(files["merged"]) as ff:
        return ff.numpy("layer2", rows)
