"""``featdump export`` as storage: nothing outside ``-o`` is deleted or written (a layer named ``..``,
symlinks inside ``-o``, a crafted manifest), ``--overwrite`` replaces an earlier export as a whole, the
completion marker (written last) and a rerun of a killed export, Zarr v3 stores read by zarr and
xarray, and exports to S3 (moto's server on 127.0.0.1) read back by embedding-reader. Every command
runs as a real process (``python -m featdump export``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from servers import s3_env, s3_server

import featdump
from featdump.errors import FeatdumpError
from featdump.store.export import MANIFEST, read_export

from conftest import run
from faultkit import extract_argv, make_images, popen
from faultkit import run as run_featdump
from readkit import feature_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    return feature_files(tmp_path_factory, photos)


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_layer_named_dotdot_is_refused_and_nothing_beside_out_changes(files: dict[str, Path], tmp_path: Path) -> None:
    hostile = tmp_path / "in" / "f.h5"
    hostile.parent.mkdir()
    shutil.copy(files["finished"], hostile)
    with h5py.File(hostile, "r+") as h5:
        h5["features"].move("layer1", "..")  # HDF5 allows the name; a folder made of it is -o's parent
    for name in ("emb", "metadata"):  # what the export of a layer ".." would replace, beside -o
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.npy").write_bytes(b"mine")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        res = run("export", str(hostile), "-o", str(tmp_path / "new"), "--pool", "avg", *extra)
        assert res.returncode == 2, res.stderr
        line = _one_line(res.stderr)
        assert "layer name" in line and "not one file name" in line, line
    assert _tree(tmp_path) == before and not (tmp_path / "new").exists()


@pytest.mark.slow  # several seconds: the whole suite runs it
def test_overwrite_follows_no_symlink_and_replaces_the_earlier_export_as_a_whole(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim"
    (victim / "emb").mkdir(parents=True)
    (victim / "emb" / "part-00000.npy").write_bytes(b"not featdump's")
    (victim / "secret.txt").write_bytes(b"keep me")
    f = str(files["finished"])
    run("export", f, "-o", str(out), "--pool", "avg", check=True)
    (out / "notes.txt").write_text("the user's")  # not featdump's: left alone
    shutil.rmtree(out / "layer1")
    (out / "layer1").symlink_to(victim, target_is_directory=True)  # a symlinked layer folder inside -o
    (out / ".features.safetensors.tmp").symlink_to(victim / "secret.txt")  # and one at a temporary name
    res = run("export", f, "-o", str(out), "--format", "safetensors", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert _tree(victim) == {"emb/part-00000.npy": b"not featdump's", "secret.txt": b"keep me"}  # nothing followed
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "features.safetensors", "notes.txt"]  # no layer left
    res = run("export", f, "-o", str(out), "--layer", "layer2", "--pool", "max", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "layer2", "notes.txt"]  # no safetensors left
    manifest = read_export(out)
    assert manifest["complete"] is True and manifest["rows"] == 8 and manifest["entries"] == ["layer2"]
    assert manifest["source"]["path"] == f and manifest["source"]["num_images"] == 8
    assert manifest["layers"][0]["files"] == ["layer2/emb/part-00000.npy", "layer2/metadata/part-00000.parquet"]
    res = run("export", f, "-o", str(out), "--layer", "layer2", "--pool", "max")  # finished: not without --overwrite
    assert res.returncode == 2 and "holds a finished export" in res.stderr and "--overwrite" in res.stderr


def test_an_unfinished_export_is_not_complete_and_a_rerun_replaces_it(files: dict[str, Path], tmp_path: Path) -> None:
    """What a killed export leaves (its first manifest, some parts; here with a crafted list of
    entries that points outside): featdump's reader refuses it, the same command replaces it."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("keep me")
    (out / "layer1" / "emb").mkdir(parents=True)
    (out / "layer1" / "emb" / "part-00007.npy").write_bytes(b"stale")
    (out / MANIFEST).write_text(json.dumps({"featdump_export": 1, "complete": False, "entries": ["layer1", "..", "../victim"]}))
    with pytest.raises(FeatdumpError, match="unfinished export"):
        read_export(out)
    with pytest.raises(FeatdumpError, match="holds no featdump export"):
        read_export(tmp_path)
    f = files["finished"]
    res = run("export", f.name, "-o", str(out), "--pool", "avg", "--rows-per-part", "4", cwd=f.parent)
    assert res.returncode == 0, res.stderr
    assert (victim / "data").read_text() == "keep me"
    assert sorted(p.name for p in (out / "layer1" / "emb").iterdir()) == ["part-00000.npy", "part-00001.npy"]
    manifest = read_export(out)
    assert manifest["parts"] == 2 and manifest["source"]["path"] == str(f)  # the source named whatever the cwd


@pytest.mark.slow
def test_a_killed_export_is_not_taken_for_complete_and_the_same_command_finishes_it(
    tmp_path: Path, random_checkpoint
) -> None:
    images = make_images(tmp_path / "images", 240, seed=3)
    h5 = tmp_path / "f.h5"
    done = run_featdump(extract_argv(images, h5, random_checkpoint("resnet18"), "--out-indices", "1,2", "--img-size", "32"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    argv = ["export", str(h5), "-o", str(out), "--pool", "avg", "--rows-per-part", "1"]
    proc = popen(argv)
    deadline = time.monotonic() + 120
    while not (out / "layer1" / "emb" / "part-00020.npy").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    with pytest.raises(FeatdumpError, match="unfinished export"):
        read_export(out)
    res = run(*argv)  # the same command, no --overwrite
    assert res.returncode == 0, res.stderr
    assert read_export(out)["rows"] == 240
    with featdump.open(h5) as ff:
        want = ff.numpy("layer2").astype(np.float32).mean(axis=(2, 3))
    got = np.concatenate([np.load(out / "layer2" / "emb" / f"part-{i:05d}.npy") for i in range(240)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not [p for p in out.rglob(".*")]  # no temporary part left


def _zarr_matches(group: object, path: Path, pooled: bool) -> None:
    with featdump.open(path) as ff:
        assert list(group["paths"][:]) == ff.paths and list(group["ids"][:]) == ff.ids  # type: ignore[index]
        assert group.attrs["model"] == "resnet18" and group.attrs["input_size"] == [3, 64, 64]  # type: ignore[attr-defined]
        for layer in ff.layers:
            want = ff.numpy(layer)
            arr = group[layer]  # type: ignore[index]
            if pooled:
                want = want.astype(np.float32).mean(axis=(2, 3))
            assert arr.shape == want.shape and arr.chunks[1:] == want.shape[1:]  # chunked by rows
            np.testing.assert_allclose(arr[:], want, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # several seconds: the whole suite runs it
def test_zarr_store_read_by_zarr_and_xarray(files: dict[str, Path], tmp_path: Path) -> None:
    import xarray as xr
    import zarr

    out = tmp_path / "feats.zarr"
    res = run("export", str(files["ids"]), "-o", str(out), "--format", "zarr", "--rows-per-part", "3")
    assert res.returncode == 0, res.stderr
    assert "8 rows" in res.stdout and "zarr store" in res.stdout and res.stderr == ""
    group = zarr.open_group(str(out), mode="r")
    assert group.metadata.zarr_format == 3 and group["layer1"].chunks == (3, 64, 16, 16)
    assert type(group["layer1"].compressors[0]).__name__ == "ZstdCodec"
    _zarr_matches(group, files["ids"], pooled=False)
    ds = xr.open_zarr(str(out))
    assert ds["layer2"].dims == ("row", "layer2.c", "layer2.h", "layer2.w") and ds.sizes["row"] == 8
    assert ds["ids"].values.tolist() == [f"key-{i:03d}" for i in range(8)]
    res = run("export", str(files["ids"]), "-o", str(out), "--format", "zarr", "--pool", "avg", "--overwrite")
    assert res.returncode == 0, res.stderr
    _zarr_matches(zarr.open_group(str(out), mode="r"), files["ids"], pooled=True)
    assert xr.open_zarr(str(out))["layer1"].dims == ("row", "layer1.c")
    assert read_export(out)["format"] == "zarr"


def test_zarr_missing_names_the_extra(files: dict[str, Path], tmp_path: Path) -> None:
    code = "import sys; sys.modules['zarr'] = None; from featdump.cli import main; sys.argv[0] = 'featdump'; main()"
    argv = [sys.executable, "-c", code, "export", str(files["finished"]), "-o", str(tmp_path / "z"), "--format", "zarr"]
    import subprocess

    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 2 and "pip install 'featdump[zarr]'" in _one_line(res.stderr), res.stderr
    assert not (tmp_path / "z").exists()


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    pytest.importorskip("s3fs")
    server = s3_server()
    try:
        env = s3_env(server)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="testing", secret="testing").mkdir("bucket")
        yield env
    finally:
        server.stop()


@pytest.mark.slow
def test_export_to_s3_read_back_by_embedding_reader_and_xarray(
    files: dict[str, Path], s3: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs
    import xarray as xr
    from embedding_reader import EmbeddingReader

    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    f = str(files["merged"])
    res = run("export", f, "-o", "s3://bucket/emb", "--pool", "avg", "--rows-per-part", "3", env=s3)
    assert res.returncode == 0, res.stderr
    assert read_export("s3://bucket/emb")["parts"] == 3
    reader = EmbeddingReader(
        "s3://bucket/emb/layer2/emb", file_format="parquet_npy", metadata_folder="s3://bucket/emb/layer2/metadata",
        meta_columns=["row", "path"],
    )  # fmt: skip
    embs, metas = zip(*reader(batch_size=3, show_progress=False), strict=True)
    with featdump.open(files["merged"]) as ff:
        assert [p for m in metas for p in m["path"]] == ff.paths
        np.testing.assert_allclose(np.concatenate(embs), ff.numpy("layer2").astype(np.float32).mean(axis=(2, 3)), rtol=1e-6)
    res = run("export", f, "-o", "s3://bucket/emb", "--pool", "avg", env=s3)
    assert res.returncode == 2 and "holds a finished export" in res.stderr
    res = run("export", f, "-o", "s3://bucket/emb", "--layer", "layer1", "--pool", "max", "--overwrite", env=s3)
    assert res.returncode == 0, res.stderr
    assert sorted(p.split("/", 2)[2] for p in fs.find("bucket/emb")) == [
        MANIFEST, "layer1/emb/part-00000.npy", "layer1/metadata/part-00000.parquet"
    ]  # fmt: skip
    res = run("export", f, "-o", "s3://bucket/feats.zarr", "--format", "zarr", env=s3)
    assert res.returncode == 0, res.stderr
    ds = xr.open_zarr("s3://bucket/feats.zarr", storage_options={"endpoint_url": s3["AWS_ENDPOINT_URL"]})
    with featdump.open(files["merged"]) as ff:
        np.testing.assert_array_equal(ds["layer1"].values, ff.numpy("layer1"))
        assert ds["paths"].values.tolist() == ff.paths
