"""Issue 21 (18): `--keep` (WebDataset members) and `--keep-columns` (table columns) store their text
row-aligned in /meta/<name>, carried by merge (virtual and --copy), export and `.torch()` items."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import pytest
from streamkit import hand_tar

from featdump.errors import UsageError

from conftest import PHOTOS, run

FAST = ("--no-pretrained", "--device", "cpu", "--out-indices", "1", "--pool", "avg", "-q")


def _meta(path: Path) -> dict[str, list[str]]:
    with h5py.File(path, "r") as h5:
        return {name: [v.decode() for v in ds[:]] for name, ds in h5["meta"].items()}


@pytest.mark.slow
def test_keep_stores_members_row_aligned_through_merge_export_and_torch(tmp_path: Path) -> None:
    import featdump

    jpg = (PHOTOS / "astronaut.jpg").read_bytes()
    one = hand_tar(tmp_path / "a-0.tar", [
        ("a.jpg", jpg), ("a.cls", b"1"), ("a.txt", "a café".encode()),
        ("b.jpg", jpg), ("b.cls", b"2"),  # no txt: ""
        ("c.jpg", b"not a jpeg"), ("c.cls", b"9"), ("c.txt", b"broken"),  # a failed row: nothing shifts
        ("d.cls", b"8"),  # no image: a failed row
        ("e.jpg", jpg), ("e.txt", b"e only"), ("e.json", b"{}"),
    ])  # fmt: skip
    two = hand_tar(tmp_path / "a-1.tar", [("f.jpg", jpg), ("f.cls", b"5")])
    shards = [tmp_path / f"s.shard-{i:05d}-of-00002.h5" for i in range(2)]
    for i in range(2):
        run("extract", "resnet18", str(one), str(two), "-o", str(tmp_path / "s.h5"), "--shard", f"{i}/2", "--keep", "cls,txt", *FAST, check=True)
    assert _meta(shards[0]) == {"cls": ["1", "2", ""], "txt": ["a café", "", "e only"]}
    with featdump.open(shards[0]) as f, h5py.File(shards[0], "r") as h5:
        assert f.ids == ["a", "b", "e"] and len(h5["failed/paths"]) == 2

    for how in ("virtual", "--copy"):
        merged = tmp_path / f"m-{how}.h5"
        run("merge", *map(str, shards), "-o", str(merged), *(["--copy"] if how == "--copy" else []), check=True)
        assert _meta(merged) == {"cls": ["1", "2", "", "5"], "txt": ["a café", "", "e only", ""]}

    run("export", str(merged), "-o", str(tmp_path / "exp"), check=True)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "exp" / "layer1" / "metadata" / "part-00000.parquet")
    assert table.column("cls").to_pylist() == ["1", "2", "", "5"] and table.column("txt").to_pylist()[0] == "a café"

    with h5py.File(shards[1], "r+") as h5:  # a /meta dataset shorter than the rows: the file is refused
        h5["meta/cls"].resize(0, axis=0)
    with pytest.raises(UsageError, match="num_images is 1 but /meta/cls holds 0 rows"):
        featdump.open(shards[1])
    with featdump.open(merged) as f:
        assert f.kept == {"cls": ["1", "2", "", "5"], "txt": ["a café", "", "e only", ""]}
        items = [f.torch(layers=["layer1"])[k] for k in range(4)]
    assert [it["meta"] for it in items[:2]] == [{"cls": "1", "txt": "a café"}, {"cls": "2", "txt": ""}]

    run("extract", "resnet18", str(two), "-o", str(tmp_path / "plain.h5"), *FAST, check=True)
    p = run("merge", str(shards[0]), str(tmp_path / "plain.h5"), "-o", str(tmp_path / "x.h5"))
    assert p.returncode == 2 and "keep" in p.stderr, p.stderr  # kept values are a merge setting
    p = run("extract", "resnet18", str(PHOTOS), "-o", str(tmp_path / "y.h5"), "--keep", "cls", *FAST)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"featdump: error: --keep applies to WebDataset tar shards (.tar, .tar.gz, .tgz), not to {PHOTOS}; "
        "for a table use --keep-columns"
    ]


@pytest.mark.slow
def test_keep_columns_stores_table_columns_row_aligned(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    import featdump

    table = tmp_path / "t.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "caption"])
        w.writerow([str(PHOTOS / "astronaut.jpg"), "7", "a person"])
        w.writerow([str(tmp_path / "missing.jpg"), "8", "gone"])  # a failed row
        w.writerow([str(PHOTOS / "coffee.jpg"), "9", ""])
    out = tmp_path / "t.h5"
    run("extract", "resnet18", str(table), "-o", str(out), "--keep-columns", "label,caption", *FAST, check=True)
    assert _meta(out) == {"label": ["7", "9"], "caption": ["a person", ""]}
    with featdump.open(out) as f:
        assert f.meta["keep_columns"] == ["label", "caption"]
    with table.open("w", newline="") as fh:  # kept columns named like the export's own, and like each other's new name
        csv.writer(fh).writerows([["path", "meta.row", "row"], [str(PHOTOS / "coffee.jpg"), "1", "2"]])
    run("extract", "resnet18", str(table), "-o", str(tmp_path / "c.h5"), "--keep-columns", "meta.row,row", *FAST, check=True)
    run("export", str(tmp_path / "c.h5"), "-o", str(tmp_path / "exp"), "--pool", "avg", check=True)
    exported = pq.read_table(next((tmp_path / "exp").glob("*/metadata/part-00000.parquet"))).to_pydict()
    assert (exported["row"], exported["meta.row"], exported["meta.meta.row"]) == ([0], ["1"], ["2"])  # none lost

    p = run("extract", "resnet18", str(table), "-o", str(tmp_path / "x.h5"), "--keep-columns", "nope", *FAST)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--keep-columns nope: no such column" in p.stderr
    p = run("extract", "resnet18", str(table), "-o", str(tmp_path / "x.h5"), "--keep-columns", "a/b", *FAST)
    assert p.returncode == 2 and "--keep-columns 'a/b' holds a path separator" in p.stderr, p.stderr
