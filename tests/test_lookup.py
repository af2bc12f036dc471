"""featdump/data/lookup.py: stored rows found again in their recorded tar shards and tables
(``verify``). No model: real tars and tables on disk, read by extract's own sources."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from streamkit import hand_tar

from featdump.data.discover import ImageRef
from featdump.data.lookup import Wanted, _written_as, find_rows, shard_names, split_shard, wanted_rows
from featdump.errors import UsageError


def test_ranks_count_earlier_rows_with_the_same_key_and_spares_count_failed_paths():
    paths = ["a.jpg", "b.jpg", "a.jpg", "a.jpg", "c.jpg"]
    got = wanted_rows([0, 2, 3, 4], paths, None, failed=["a.jpg", "zz.jpg"])
    assert [(w.row, w.rank, w.spare) for w in got] == [(0, 0, 1), (2, 1, 1), (3, 2, 1), (4, 0, 0)]
    # with ids the key is (path, id): the same path under two ids is two keys
    got = wanted_rows([2], paths, ["1", "2", "2", "1", "3"], failed=[])
    assert (got[0].id, got[0].rank) == ("2", 0)


def test_a_row_is_the_rank_th_sample_that_decodes_when_its_path_also_failed():
    w = Wanted(7, "x.jpg", None, rank=1, spare=1)
    for k in range(5):
        w.offer(k, ImageRef("ignored", f"src{k}"))
    assert [r.source for r in w.found] == ["src0", "src1", "src2"] and w.done  # rank + spare + 1 candidates
    assert all(r.path == "x.jpg" for r in w.found)  # the stored path, for the report
    assert w.pick([False, True, True]) == 2  # the first one failed to decode: row 1 is the third
    assert w.pick([True, True, False]) == 1
    assert w.pick([True, False, False]) is None  # too few decode now
    exact = Wanted(3, "y.jpg", None, rank=2)
    for k in range(4):
        exact.offer(k, ImageRef("y.jpg", f"src{k}"))
    assert [r.source for r in exact.found] == ["src2"] and exact.pick([True]) == 0 and exact.pick([False]) is None


@pytest.mark.parametrize(
    "stored,want",
    [
        ("wds/s-001.tar/dir.v1/a.jpeg", [("wds/s-001.tar", "dir.v1/a.jpeg")]),
        ("s.tar.gz/k.png", [("s.tar.gz", "k.png")]),
        ("s.tar@1536", [("s.tar", "1536")]),
        ("http://h:1/r-001.tar/1_03.jpg", [("http://h:1/r-001.tar", "1_03.jpg")]),
        ("x.tar/in.tar/k.png", [("x.tar", "in.tar/k.png"), ("x.tar/in.tar", "k.png")]),
        ("photos/cat.jpg", []),
    ],
)
def test_split_shard(stored, want):
    assert split_shard(stored) == want


def test_shard_names_of_every_row_and_failure():
    stored = ["a.tar/x.jpg", "a.tar/y.jpg", "B.TGZ@512", "B.TGZ/k", "c.tar.gz/k.png", "photos/d.jpg"]
    assert shard_names(stored) == {"a.tar", "B.TGZ", "c.tar.gz"}


def test_shard_names_as_written_go_to_the_recorded_shard_they_name_best():
    shards = ["/run/a.tar", "/run/sub/a.tar", "/data/x/b.tar", "http://h:1/c.tar"]
    written = ["a.tar", "sub/a.tar", "../x/b.tar", "http://h:1/c.tar", "/data/x/b.tar"]
    got = _written_as(shards, written)
    assert got == {
        "a.tar": ["/run/a.tar"],
        "sub/a.tar": ["/run/sub/a.tar"],
        "/data/x/b.tar": ["/data/x/b.tar"],  # absolute beats relative
        "http://h:1/c.tar": ["http://h:1/c.tar"],
    }
    assert _written_as(["/x/b.tar"], ["../x/b.tar"]) == {"../x/b.tar": ["/x/b.tar"]}
    assert _written_as(["http://h:1/c.tar"], ["c.tar"]) == {}  # a URL only as written


def _png(photos: Path, name: str) -> bytes:
    return (photos / name).read_bytes()


def test_tar_rows_are_found_in_their_shard_only(tmp_path, photos):
    a, b, c = (_png(photos, n) for n in ("astronaut.jpg", "coffee.jpg", "rocket.jpg"))
    hand_tar(tmp_path / "s-000.tar", [("k1.jpg", a), ("k2.jpg", b)])
    hand_tar(tmp_path / "s-001.tar", [("k1.jpg", c), ("k2.txt", b"no image"), ("k1.jpg", b)])  # k1 twice
    paths = ["s-000.tar/k1.jpg", "s-000.tar/k2.jpg", "s-001.tar/k1.jpg", "s-001.tar/k1.jpg"]
    ids = ["k1", "k2", "k1", "k1"]
    wanted = wanted_rows([1, 3], paths, ids, failed=["s-001.tar/k2"])
    find_rows("tar", [str(tmp_path / "s-{000..001}.tar")], None, wanted, (0, 1), names=paths)
    assert [w.found[0].data for w in wanted] == [b, b] and [w.found[0].path for w in wanted] == [paths[1], paths[3]]
    assert wanted[1].found[0].id == "k1"

    (tmp_path / "s-000.tar").unlink()  # a shard without sampled rows is never opened
    wanted = wanted_rows([2], paths, ids, failed=[])
    find_rows("tar", [str(tmp_path / "s-{000..001}.tar")], None, wanted, (0, 1), names=paths)
    assert wanted[0].found[0].data == c
    with pytest.raises(UsageError, match=r"tar shard not found: .*s-000\.tar \(it holds row 0, s-000\.tar/k1\.jpg\)"):
        find_rows("tar", [str(tmp_path / "s-{000..001}.tar")], None, wanted_rows([0], paths, ids, []), (0, 1), names=paths)
    hand_tar(tmp_path / "s-001.tar", [("k1.jpg", c)])
    with pytest.raises(UsageError, match=r"row 3's image k1\.jpg is not in the tar shard .*s-001\.tar any more"):
        find_rows("tar", [str(tmp_path / "s-{000..001}.tar")], None, wanted_rows([3], paths, ids, []), (0, 1), names=paths)
    whole = (tmp_path / "s-001.tar").read_bytes()
    (tmp_path / "s-001.tar").write_bytes(whole[:700])  # the rows' members lie in its unreadable rest
    with pytest.raises(UsageError, match=r"row 3's image k1\.jpg in the tar shard .* cannot be read now: rest of"):
        find_rows("tar", [str(tmp_path / "s-{000..001}.tar")], None, wanted_rows([3], paths, ids, []), (0, 1), names=paths)


def test_a_shard_file_holds_its_block_of_the_shards(tmp_path, photos):
    a, b = _png(photos, "camera.jpg"), _png(photos, "coins.jpg")
    for folder, data in (("a", a), ("b", b)):
        (tmp_path / folder).mkdir()
        hand_tar(tmp_path / folder / "s.tar", [("k.jpg", data)])
    # run in b/ as `extract ../a/s.tar s.tar --shard 1/2`: its rows are "s.tar/k.jpg", which a/s.tar ends with too
    inputs = [str(tmp_path / "a" / "s.tar"), str(tmp_path / "b" / "s.tar")]
    wanted = wanted_rows([0], ["s.tar/k.jpg"], ["k"], failed=[])
    find_rows("tar", inputs, None, wanted, (1, 2), names=["s.tar/k.jpg"])
    assert wanted[0].found[0].data == b


def test_table_rows_match_by_path_in_order_despite_failures_and_repeats(tmp_path, photos):
    for n in ("astronaut.jpg", "coffee.jpg"):
        (tmp_path / n).write_bytes(_png(photos, n))
    table = tmp_path / "t.csv"
    table.write_text("path\nastronaut.jpg\n\nmissing.jpg\ncoffee.jpg\nastronaut.jpg\n")
    paths = ["astronaut.jpg", "coffee.jpg", "astronaut.jpg"]  # row 1 of the table had no path, row 2 failed
    cols = SimpleNamespace(path_column=None, image_column=None, id_column=None)  # the default columns
    wanted = wanted_rows([1, 2], paths, None, failed=["ROW:1", "missing.jpg"])
    find_rows("table", [str(table)], cols, wanted, (0, 1))
    assert [w.found[0].source for w in wanted] == [str(tmp_path / "coffee.jpg"), str(tmp_path / "astronaut.jpg")]
    table.unlink()
    with pytest.raises(UsageError, match=r"input not found: .*t\.csv \(the table the rows were read from\)"):
        find_rows("table", [str(table)], cols, wanted_rows([0], paths, None, []), (0, 1))


def test_parquet_rows_of_several_merged_runs_follow_one_another(tmp_path, photos):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    a, b, c = (_png(photos, n) for n in ("chelsea.jpg", "coins.jpg", "hubble_deep_field.jpg"))
    pq.write_table(pa.table({"image": pa.array([{"bytes": a, "path": "a"}, {"bytes": b, "path": None}])}), tmp_path / "1.parquet")
    pq.write_table(pa.table({"image": pa.array([{"bytes": c, "path": "c"}])}), tmp_path / "2.parquet")
    paths = ["a", "ROW:1", "c"]
    cols = SimpleNamespace(path_column=None, image_column="image", id_column=None)
    wanted = wanted_rows([1, 2], paths, None, failed=[])
    find_rows("table", [str(tmp_path / "1.parquet"), str(tmp_path / "2.parquet")], cols, wanted, (0, 1))
    assert [w.found[0].data for w in wanted] == [b, c]
    with pytest.raises(UsageError, match=r"row 0's image gone is not in the table"):
        find_rows("table", [str(tmp_path / "1.parquet")], cols, wanted_rows([0], ["gone"], None, []), (0, 1))
