"""``featdump export``: read back by the real readers (embedding-reader, faiss, safetensors), the
layout of docs/reading.md, parts, ids, partial and merged files, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import featdump
from featdump.errors import UsageError
from featdump.store.export import export_file

from readkit import feature_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    return feature_files(tmp_path_factory, photos)


def _pooled(path: Path, layer: str, how: str = "avg") -> np.ndarray:
    with featdump.open(path) as ff:
        x = ff.numpy(layer).astype(np.float32)
    return x.mean(axis=(2, 3)) if how == "avg" else x.max(axis=(2, 3))


@pytest.mark.slow
def test_embedding_reader_reads_back_the_files_rows(cli, files: dict[str, Path], tmp_path: Path) -> None:
    from embedding_reader import EmbeddingReader

    out = tmp_path / "emb"
    res = cli("export", str(files["merged"]), "-o", str(out), "--pool", "avg", "--rows-per-part", "3")
    assert res.exit_code == 0, res.output
    assert "8 rows" in res.stdout and "3 part(s)" in res.stdout
    for layer in ("layer1", "layer2"):
        names = sorted(p.name for p in (out / layer / "emb").iterdir())
        assert names == ["part-00000.npy", "part-00001.npy", "part-00002.npy"]
        assert sorted(p.name for p in (out / layer / "metadata").iterdir()) == [
            n.replace(".npy", ".parquet") for n in names
        ]
        reader = EmbeddingReader(
            str(out / layer / "emb"), file_format="parquet_npy", metadata_folder=str(out / layer / "metadata"),
            meta_columns=["row", "path"],
        )  # fmt: skip
        assert reader.count == 8
        embs, metas = [], []
        for emb, meta in reader(batch_size=3, show_progress=False):
            embs.append(emb)
            metas.append(meta)
        got = np.concatenate(embs)
        import pandas as pd

        meta = pd.concat(metas)
        assert meta["row"].tolist() == list(range(8))
        with featdump.open(files["merged"]) as ff:
            assert meta["path"].tolist() == ff.paths
        np.testing.assert_allclose(got, _pooled(files["merged"], layer), rtol=1e-6, atol=1e-7)


def test_faiss_finds_each_vector_as_its_own_nearest_neighbour(files: dict[str, Path], tmp_path: Path) -> None:
    import faiss

    summary = export_file(files["finished"], tmp_path / "e", layers=["layer2"], pool="max", dtype="float16")
    assert summary.layers[0].dtype == "float16" and summary.layers[0].shape == [128]
    vecs = np.load(tmp_path / "e" / "layer2" / "emb" / "part-00000.npy")
    assert vecs.dtype == np.float16 and vecs.shape == (8, 128)
    np.testing.assert_array_equal(vecs, _pooled(files["finished"], "layer2", "max").astype(np.float16))
    x = np.ascontiguousarray(vecs, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _dist, nearest = index.search(x, 1)
    assert nearest[:, 0].tolist() == list(range(8))


def test_ids_column_partial_file_and_token_layers(files: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    export_file(files["ids"], tmp_path / "ids", layers=["layer1"], pool="avg", rows_per_part=5)
    table = pq.read_table(tmp_path / "ids" / "layer1" / "metadata" / "part-00001.parquet").to_pydict()
    assert table["row"] == [5, 6, 7] and table["id"] == ["key-005", "key-006", "key-007"]
    export_file(files["partial"], tmp_path / "part", pool="avg")  # committed rows only
    assert np.load(tmp_path / "part" / "layer2" / "emb" / "part-00000.npy").shape == (5, 128)
    table = pq.read_table(tmp_path / "part" / "layer2" / "metadata" / "part-00000.parquet")
    assert table.column_names == ["row", "path"]  # no id column without ids
    export_file(files["tokens"], tmp_path / "tok", pool="avg")
    with featdump.open(files["tokens"]) as ff:
        want = ff.numpy("blocks.1")[:, 1:].mean(axis=1)  # patch tokens only: the class token is skipped
    np.testing.assert_allclose(np.load(tmp_path / "tok" / "blocks.1" / "emb" / "part-00000.npy"), want, rtol=1e-6)


def test_safetensors_round_trip_and_size_limit(cli, files: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    res = cli("export", str(files["finished"]), "-o", str(tmp_path / "st"), "--format", "safetensors", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["format"] == "safetensors" and info["rows"] == 8
    with safe_open(str(tmp_path / "st" / "features.safetensors"), "np") as st, featdump.open(files["finished"]) as ff:
        assert sorted(st.keys()) == ["layer1", "layer2"]
        for layer in ff.layers:
            np.testing.assert_array_equal(st.get_tensor(layer), ff.numpy(layer))  # maps whole, unpooled
        assert st.metadata()["rows"] == "8"
    npy = tmp_path / "np"
    assert cli("export", str(files["finished"]), "-o", str(npy), "--pool", "avg").exit_code == 0
    mode = (npy / "layer1" / "emb" / "part-00000.npy").stat().st_mode & 0o777
    assert (tmp_path / "st" / "features.safetensors").stat().st_mode & 0o777 == mode  # not 0600 (umask's mode)
    with pytest.raises(UsageError, match="use --format npy"):  # 8 rows × 128 floats are over a 1 kB limit
        export_file(files["finished"], tmp_path / "big", layers=["layer2"], pool="avg", fmt="safetensors", safetensors_limit=1024)
    assert not (tmp_path / "big").exists()  # refused before anything is written
    export_file(files["finished"], tmp_path / "small", layers=["layer2"], pool="avg", fmt="safetensors", safetensors_limit=8 * 128 * 4)


def test_refusals_exit_2_and_leave_the_folder_alone(cli, files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = cli("export", str(files["finished"]), "-o", str(out), "--layer", "layer2")
    assert res.exit_code == 2 and "is a map (128×8×8 per image)" in res.stderr and "--pool avg|max" in res.stderr
    res = cli("export", str(files["finished"]), "-o", str(out), "--layer", "layer9", "--pool", "avg")
    assert res.exit_code == 2 and "no layer 'layer9'" in res.stderr and "layer1, layer2" in res.stderr
    res = cli("export", str(files["finished"]), "-o", str(out), "--pool", "median")
    assert res.exit_code == 2 and "--pool must be avg or max" in res.stderr
    res = cli("export", str(files["finished"]), "-o", str(out), "--pool", "avg", "--rows-per-part", "0")
    assert res.exit_code == 2
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = cli("export", str(files["finished"]), "-o", str(out), "--pool", "avg")
    assert res.exit_code == 2 and "not empty" in res.stderr and "--overwrite" in res.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    first = export_file(files["finished"], tmp_path / "again", layers=["layer2"], pool="avg", rows_per_part=2)
    assert first.parts == 4
    again = cli("export", str(files["finished"]), "-o", str(tmp_path / "again"), "--layer", "layer2", "--pool", "avg", "--overwrite", "-q")
    assert again.exit_code == 0 and again.stdout == ""
    assert [p.name for p in (tmp_path / "again" / "layer2" / "emb").iterdir()] == ["part-00000.npy"]  # no stale parts
    missing = cli("export", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "x"), "--pool", "avg")
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    import shutil

    import h5py

    renamed = tmp_path / "renamed.h5"  # a layer renamed (h5py) to a name the export writes itself
    shutil.copy(files["finished"], renamed)
    with h5py.File(renamed, "r+") as h5:
        h5.move("features/layer2", "features/featdump-export.json")
    res = cli("export", str(renamed), "-o", str(tmp_path / "r"), "--pool", "avg")
    assert res.exit_code == 2 and "has the name of a file --format npy writes itself" in res.stderr, res.output
    assert not (tmp_path / "r").exists()


def test_a_prefix_dataset_pools_over_its_own_tokens(cli, tmp_path: Path) -> None:
    """``--tokens both``: ``<name>.prefix`` holds only the class token, so export ``--pool`` and
    ``.torch(pool=)`` give that token (they skipped it as a prefix and wrote NaN)."""
    from conftest import smooth_picture

    (tmp_path / "imgs").mkdir()
    for i in range(2):
        smooth_picture(40, 48, i).save(tmp_path / "imgs" / f"{i}.png")
    out = tmp_path / "v.h5"
    featdump.extract("vit_tiny_patch16_224", tmp_path / "imgs", out, layers=["blocks.1"], tokens="both",
                     img_size=32, pretrained=False, device="cpu", quiet=True)  # fmt: skip
    r = cli("export", str(out), "-o", str(tmp_path / "emb"), "--pool", "avg")
    assert r.exit_code == 0, r.output
    with featdump.open(out) as ff:
        cls = ff.numpy("blocks.1.prefix")[:, 0].astype(np.float32)
        pooled = ff.torch("blocks.1.prefix", pool="avg")[1]["blocks.1.prefix"]
    np.testing.assert_array_equal(np.load(tmp_path / "emb" / "blocks.1.prefix" / "emb" / "part-00000.npy"), cls)
    np.testing.assert_array_equal(pooled.numpy(), cls[1])
