"""`featdump merge` of independent runs: an old file and new images extracted with
`--like` it join, run after run in the order given, virtual and `--copy`; files whose rows would
mean something else, or that hold one path (or id) twice, are refused naming the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from clusterkit import make_images, read
from conftest import run

pytestmark = pytest.mark.slow  # real extractions in real processes

SMALL = ("--img-size", "64", "--workers", "0", "--device", "cpu", "-q")
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _extract(*args: str) -> None:
    run("extract", "resnet18", *args, *SMALL, check=True, env=OFFLINE)


def _merge(*args: str) -> Any:
    return run("merge", *map(str, args), env=OFFLINE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """old.h5 over 4 images (one broken); new images extracted --like it, as two shards, and once
    more with another codec; and files to refuse: another dtype, a path old.h5 holds too."""
    root = tmp_path_factory.mktemp("runs")
    old_imgs = make_images(root / "old", 4, broken=(2,))
    more = make_images(root / "more", 7)
    new_imgs = root / "new"
    new_imgs.mkdir()
    for i in range(3):  # other images, other names
        shutil.copy(next(more.rglob(f"img{4 + i:03d}.png")), new_imgs / f"extra{i}.png")
    twin = root / "twin"  # one new image, and one whose stored path old.h5 holds too
    (twin / "b").mkdir(parents=True)
    shutil.copy(new_imgs / "extra0.png", twin / "zz.png")
    shutil.copy(more / "b" / "img000.png", twin / "b" / "img000.png")
    old = root / "old.h5"
    _extract(str(old_imgs), "-o", str(old), "--no-pretrained", "--out-indices", "1,2")
    for i in range(2):
        _extract(str(new_imgs), "-o", str(root / "new.h5"), "--like", str(old), "--shard", f"{i}/2")
    _extract(str(new_imgs), "-o", str(root / "gzip.h5"), "--like", str(old), "--compression", "gzip")
    _extract(str(twin), "-o", str(root / "twin.h5"), "--like", str(old))
    _extract(str(new_imgs), "-o", str(root / "other.h5"), "--no-pretrained", "--out-indices", "1,2", "--dtype", "float16")
    return {
        "root": root,
        "old": old,
        "new": [root / f"new.shard-0000{i}-of-00002.h5" for i in range(2)],
        "gzip": root / "gzip.h5",
        "twin": root / "twin.h5",
        "other": root / "other.h5",
        "new_imgs": new_imgs,
    }


def test_old_and_like_join_in_order_virtual_and_copy(runs: dict[str, Path], tmp_path: Path) -> None:
    import featdump

    parts = [runs["old"], *runs["new"]]  # one whole run, then one given as its two shards
    old, new = read(runs["old"]), [read(p) for p in runs["new"]]
    for extra in ((), ("--copy",)):
        out = runs["root"] / f"both{len(extra)}.h5"
        p = _merge(*parts, "-o", out, *extra)
        assert p.returncode == 0, p.stderr
        assert "of 2 runs" in p.stdout
        m = read(out)
        assert m["paths"] == old["paths"] + [q for part in new for q in part["paths"]]
        assert m["failed"] == old["failed"] == ["b/img002.png"]
        for name in old["features"]:
            want = np.concatenate([old["features"][name], *(part["features"][name] for part in new)])
            np.testing.assert_array_equal(m["features"][name], want, err_msg=name)
        a = m["attrs"]
        assert a["shard"] == [0, 1] and a["num_images"] == 6 and a["num_failed"] == 1 and a["complete"] is True
        assert a["num_inputs"] == a["list_size"] == 7 and a["input_digest"] == a["list_digest"]
        assert a["input_digest"] not in (old["attrs"]["list_digest"], new[0]["attrs"]["list_digest"])
        assert a["merged_from"] == [q.name for q in parts] and a["merge"] == ("copy" if extra else "virtual")
        assert json.loads(a["inputs"]) == [str(runs["root"] / "old"), str(runs["new_imgs"])]
        with h5py.File(out, "r") as h5:
            assert all(ds.is_virtual != bool(extra) for ds in h5["features"].values())
        with featdump.open(out) as f:
            assert f.row("extra1.png") == 4 and f.ids is None and f.complete
    both = runs["root"] / "both0.h5"
    assert run("show", str(both), env=OFFLINE).returncode == 0
    p = run("verify", str(both), "-n", "6", env=OFFLINE)
    assert p.returncode == 0, p.stdout + p.stderr  # the images are found under either run's INPUTs
    again = tmp_path / "again.h5"
    _extract(str(runs["new_imgs"]), "-o", str(again), "--like", str(both))
    with featdump.open(again) as f, featdump.open(both) as b:
        assert f.meta["out_indices"] == b.meta["out_indices"] == [1, 2]
        np.testing.assert_allclose(f.numpy("layer2"), b.numpy("layer2")[3:], rtol=1e-4, atol=1e-5)

    # in the order given: the new run first
    p = _merge(*runs["new"], runs["old"], "-o", tmp_path / "new-first.h5")
    assert p.returncode == 0, p.stderr
    assert read(tmp_path / "new-first.h5")["paths"] == [q for part in new for q in part["paths"]] + old["paths"]
    # execution settings may differ: another codec (the copy is written with the first file's)
    p = _merge(runs["old"], runs["gzip"], "-o", tmp_path / "codecs.h5", "--copy")
    assert p.returncode == 0, p.stderr


def _refused(*args: Any) -> str:
    p = _merge(*args)
    assert p.returncode == 2, p.stdout + p.stderr
    return p.stderr


def test_refuses_what_would_not_be_one_file(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.h5"
    old, other, twin = runs["old"], runs["other"], runs["twin"]
    err = _refused(old, other, "-o", out)
    assert f'{other} was made with dtype="float16", {old} with dtype="float32"' in err
    err = _refused(old, twin, "-o", out)
    assert f"{old} and {twin} both hold the path b/img000.png" in err
    err = _refused(old, runs["new"][1], "-o", out)  # a run without all its shards
    assert "is shard 1 of 2" in err and "each with all its shards" in err
    merged = tmp_path / "merged.h5"
    assert _merge(old, *runs["new"], "-o", merged).returncode == 0
    assert "is itself a merged file; merge the original files" in _refused(merged, old, "-o", out)
    assert not out.exists() and [q.name for q in tmp_path.iterdir() if q.name.startswith(".")] == []


def test_ids_must_be_in_both_and_once(tmp_path: Path) -> None:
    images = make_images(tmp_path / "imgs", 3)
    tables = []
    for name, rows in (("t1", [("b/img000.png", "k0"), ("a/img001.png", "k1")]), ("t2", [("b/img002.png", "k0")])):
        table = tmp_path / f"{name}.csv"
        table.write_text("path,key\n" + "".join(f"{images.name}/{p},{k}\n" for p, k in rows))
        _extract(str(table), "-o", str(tmp_path / f"{name}.h5"), "--no-pretrained", "--id-column", "key")
        tables.append(tmp_path / f"{name}.h5")
    t1, t2 = tables
    assert f"{t1} and {t2} both hold the id k0" in _refused(t1, t2, "-o", tmp_path / "m.h5")
    bare = tmp_path / "bare.h5"
    shutil.copy(t2, bare)
    with h5py.File(bare, "r+") as h5:  # as if its inputs had given no ids
        del h5["ids"], h5["failed/ids"]
    assert f"{t1} has /ids (its inputs gave ids), {bare} has none" in _refused(t1, bare, "-o", tmp_path / "m.h5")
