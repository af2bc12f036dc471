"""Tables as INPUTs (docs/inputs.md): Parquet of image bytes (Hugging Face struct and plain
binary), CSV/TSV/JSONL of paths, id columns, column defaults and errors, sharding by rows, resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamkit import argv, assert_same_features, features, images_in_order, key_of, write_parquet

import featdump
from featdump.data.sources import open_source

from conftest import invoke
from faultkit import NO_MODEL, make_images


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, random_checkpoint) -> dict:
    root = tmp_path_factory.mktemp("table")
    images = make_images(root / "images", 14, seed=9, broken=(5,))
    ckpt = random_checkpoint("resnet18")
    folder_out = root / "folder.h5"
    res = invoke(*argv(str(images), folder_out, ckpt))
    assert res.exit_code == 0, res.output
    order = images_in_order(images)
    return {"root": root, "images": images, "ckpt": ckpt, "folder": features(folder_out), "order": order}


@pytest.mark.slow
def test_parquet_of_image_bytes_equals_the_folder(cli, data: dict, tmp_path: Path) -> None:
    table = write_parquet(data["images"], tmp_path / "hf.parquet", struct=True, row_group_size=4)
    out = tmp_path / "pq.h5"
    result = cli(*argv(str(table), out, data["ckpt"], "--image-column", "image", "--id-column", "id"))
    assert result.exit_code == 0, result.output
    got, want = features(out), data["folder"]
    assert got["paths"] == want["paths"]  # the struct's path field
    assert got["failed"] == want["failed"] and len(got["failed"]) == 1
    assert got["ids"] == [key_of(data["images"], data["images"] / p) for p in want["paths"]]
    assert got["failed_ids"] == [key_of(data["images"], data["images"] / want["failed"][0])]
    assert_same_features(got, want)
    assert got["attrs"]["input_kind"] == "table" and got["attrs"]["id_column"] == "id"
    with featdump.open(out) as f:
        assert f.row_of_id(got["ids"][3]) == 3


def test_plain_binary_column_stores_row_numbers(cli, data: dict, tmp_path: Path) -> None:
    table = write_parquet(data["images"], tmp_path / "bin.parquet", struct=False)
    out = tmp_path / "bin.h5"
    result = cli(*argv(str(table), out, data["ckpt"], "--image-column", "image"))
    assert result.exit_code == 0, result.output
    got = features(out)
    assert got["paths"] == [f"ROW:{i}" for i in range(14) if i != 5] and got["failed"] == ["ROW:5"]
    assert got["ids"] is None and got["failed_ids"] is None
    assert_same_features(got, data["folder"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_text_tables_of_paths(cli, data: dict, tmp_path: Path, kind: str) -> None:
    rels = [p.relative_to(data["images"]).as_posix() for p in data["order"]]
    ids = [f"{i:04d}" for i in range(len(rels))]  # leading zeros: ids are text, never numbers
    table = data["images"] / f"list.{kind}"
    if kind == "jsonl":
        table.write_text("".join(json.dumps({"filename": r, "id": i}) + "\n" for r, i in zip(rels, ids, strict=True)))
    else:
        sep = "\t" if kind == "tsv" else ","
        table.write_text(f"label{sep}filename{sep}id\n" + "".join(f"1{sep}{r}{sep}{i}\n" for r, i in zip(rels, ids, strict=True)))
    out = tmp_path / f"{kind}.h5"
    result = cli(*argv(str(table), out, data["ckpt"], "--id-column", "id"))  # default path column: filename
    assert result.exit_code == 0, result.output
    got, want = features(out), data["folder"]
    assert got["paths"] == want["paths"] and got["failed"] == want["failed"]
    assert got["ids"] == [i for i in ids if i != "0005"] and got["failed_ids"] == ["0005"]
    assert_same_features(got, want)
    table.unlink()


@pytest.mark.slow
def test_table_sharding_by_rows_and_streaming_from_a_position(cli, data: dict, tmp_path: Path) -> None:
    table = write_parquet(data["images"], tmp_path / "t.parquet", row_group_size=3)
    flags = ("--image-column", "image", "--batch-size", "1")  # blocks of 5, 5, 4 rows: the same batches as one run
    assert cli(*argv(str(table), tmp_path / "one.h5", data["ckpt"], *flags)).exit_code == 0
    parts = []
    for i in range(3):
        result = cli(*argv(str(table), tmp_path / "p.h5", data["ckpt"], *flags, "--shard", f"{i}/3"))
        assert result.exit_code == 0, result.output
        parts.append(str(tmp_path / f"p.shard-{i:05d}-of-00003.h5"))
    merged = tmp_path / "m.h5"
    assert cli("merge", *parts, "-o", str(merged), "--copy").exit_code == 0
    got, one = features(merged), features(tmp_path / "one.h5")
    assert got["paths"] == one["paths"] == data["folder"]["paths"]
    assert got["failed"] == one["failed"]
    assert_same_features(got, one)
    # the stream from a position skips whole row groups by their footer counts
    sel = open_source([str(table)], _Cols(image_column="image")).select(0, 1)
    full = list(sel.stream())
    assert [r.path for r in sel.stream(7)] == [r.path for r in full[7:]]
    assert [r.data for r in sel.stream(7)] == [r.data for r in full[7:]]


class _Cols:
    def __init__(self, path_column=None, image_column=None, id_column=None) -> None:  # noqa: ANN001
        self.path_column, self.image_column, self.id_column = path_column, image_column, id_column


@pytest.mark.parametrize(
    ("text", "flags", "message"),
    [
        ("a,b\n1,2\n", [], "none of the columns path, image_path"),
        ("path,b\n1,2\n", ["--id-column", "nope"], "--id-column nope: no such column"),
        ("path,b\nx.png,2\n", ["--image-column", "b"], "--image-column needs a .parquet table"),
    ],
)
def test_table_errors_are_usage_errors(cli, data: dict, tmp_path: Path, text: str, flags: list[str], message: str) -> None:
    table = tmp_path / "t.csv"
    table.write_text(text)
    out = tmp_path / "o.h5"
    result = cli(*argv(str(table), out, data["ckpt"], *flags))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_a_path_column_of_image_bytes_is_a_usage_error_before_the_model_loads(
    cli, data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Image bytes taken for file names used to fail every row with its bytes as the path (a
    165 KB error line); the column's type says which option was meant."""
    table = write_parquet(data["images"], tmp_path / "hf.parquet", struct=True)
    out = tmp_path / "o.h5"
    result = cli(*argv(str(table), out, data["ckpt"], "--path-column", "image", model=NO_MODEL))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "featdump: error: column image holds image bytes ({bytes, path} structs); use --image-column image"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("bin.parquet", {"path_column": "image"}, "column image holds image bytes (binary); use --image-column image"),
        ("file.parquet", {}, "column file holds image bytes (binary); use --image-column file"),  # the default path column
        ("n.parquet", {"path_column": "label"}, "column label holds int64 values, not paths or URLs (text)"),
        ("n.jsonl", {}, "column path holds int64 values, not paths or URLs (text)"),
        ("s.parquet", {"image_column": "id"}, "column id holds text, not image bytes; for paths or URLs use --path-column id"),
        ("n.parquet", {"image_column": "label"}, "column label holds int64 values, not image bytes (binary, or {bytes, path} structs)"),
        ("bin.parquet", {"image_column": "image", "id_column": "image"}, "--id-column image: the column holds image bytes; --id-column stores text values"),
        ("bin.parquet", {"image_column": "image", "keep_columns": ("image",)}, "--keep-columns image: the column holds image bytes; --keep-columns stores text values"),
    ],
)
def test_a_column_of_the_wrong_kind_is_a_usage_error(tmp_path: Path, table: str, columns: dict, message: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featdump.errors import UsageError

    path = tmp_path / table
    if table == "n.jsonl":
        path.write_text('{"path": 1}\n{"path": 2}\n')
    else:
        cells = {"bin.parquet": {"image": pa.array([b"\xff\xd8"], pa.binary())}, "file.parquet": {"file": pa.array([b"x"])}}
        pq.write_table(pa.table(cells.get(table, {"id": ["a"], "label": [3]})), path)
    with pytest.raises(UsageError) as err:
        open_source([str(path)], SimpleNamespace(**columns))
    assert str(err.value) == message


def test_error_text_is_clipped_where_it_is_stored_and_printed(cli, data: dict, tmp_path: Path) -> None:
    from featdump.text import ERROR_CHARS, LINE_CHARS, clip

    assert clip("x" * 10, 10) == "x" * 10 and clip("x" * 15, 10) == "x" * 10 + "... (5 more characters)"
    long = "/".join(["d" * 200] * 15) + "/gone.png"  # 3 KB of path: no such file, named in the error
    table = tmp_path / "long.csv"
    table.write_text(f"path\n{long}\n")
    out = tmp_path / "o.h5"
    result = cli(*argv(str(table), out, data["ckpt"]))
    assert result.exit_code == 1, result.output  # every input failed
    lines = [line for line in result.output.splitlines() if line.startswith("featdump: error:")]
    assert len(lines) == 1 and LINE_CHARS < len(lines[0]) < LINE_CHARS + 100, lines
    got = features(out)
    assert got["failed"] == [long]  # the path itself is data: kept whole
    assert got["errors"][0].startswith("FileNotFoundError:") and len(got["errors"][0]) < ERROR_CHARS + 100


def test_one_table_per_run_and_missing_table(cli, data: dict, tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("path\nx.png\n")
    b.write_text("path\nx.png\n")
    out = tmp_path / "o.h5"
    result = cli(*argv([str(a), str(b)], out, data["ckpt"]))
    assert result.exit_code == 2 and "one table per run" in result.output
    result = cli(*argv([str(tmp_path / "gone.parquet")], out, data["ckpt"]))
    assert result.exit_code == 2 and "input not found" in result.output
    result = cli(*argv([str(a), str(data["images"])], out, data["ckpt"]))
    assert result.exit_code == 2 and "INPUTs mix kinds" in result.output


def test_a_table_may_list_an_image_twice_and_lookups_say_so(cli, data: dict, tmp_path: Path) -> None:
    """One image under two labels is a legitimate table: both rows are stored; .row and .row_of_id
    refuse the ambiguous key (naming the rows) and agree on the others."""
    first, second = data["order"][0], data["order"][1]
    table = tmp_path / "dup.csv"
    table.write_text(f"path,id\n{first},x\n{first},x\n{second},y\n", encoding="utf-8")
    out = tmp_path / "dup.h5"
    result = cli(*argv(str(table), out, data["ckpt"], "--id-column", "id"))
    assert result.exit_code == 0, result.output
    with featdump.open(out) as f:
        assert f.num_images == 3
        with pytest.raises(ValueError, match=r"rows of .* \(0, 1\); choose one from \.paths"):
            f.row(str(first))
        with pytest.raises(ValueError, match=r"\(0, 1\); choose one from \.ids"):
            f.row_of_id("x")
        assert f.row(str(second)) == f.row_of_id("y") == 2


def test_a_hugging_face_image_column_is_found_and_missing_ids_are_empty(cli, data: dict, tmp_path: Path) -> None:
    """No option names the image column: a Parquet column of {bytes, path} structs is taken. A
    missing id (null, NaN) is stored as "", never as "None" or "nan"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    photos = data["order"][:4]
    image = pa.array([{"bytes": p.read_bytes(), "path": p.name} for p in photos])
    table = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"picture": image, "key": pa.array([1.5, float("nan"), None, 4.0])}), table)
    out = tmp_path / "o.h5"
    result = cli(*argv(str(table), out, data["ckpt"], "--id-column", "key"))
    assert result.exit_code == 0, result.output
    got = features(out)
    assert got["paths"] == [p.name for p in photos]
    assert got["ids"] == ["1.5", "", "", "4.0"]


def test_a_text_table_row_over_a_megabyte(cli, data: dict, tmp_path: Path) -> None:
    """A 2 MB caption is read (CSV and JSONL); a row over the 16 MiB parse block is one line saying
    so (exit 2), not pyarrow's advice to raise a block size the user cannot set."""
    rel = data["order"][0].relative_to(data["images"]).as_posix()
    csv, jsonl = data["images"] / "long.csv", data["images"] / "long.jsonl"
    csv.write_text(f"filename,caption\n{rel},{'x' * (2 << 20)}\n")
    jsonl.write_text(json.dumps({"filename": rel, "caption": "x" * (2 << 20)}) + "\n")
    for k, table in enumerate((csv, jsonl)):
        result = cli(*argv(str(table), tmp_path / f"{k}.h5", data["ckpt"]))
        assert result.exit_code == 0, result.output
        assert features(tmp_path / f"{k}.h5")["paths"] == [rel]
    jsonl.write_text(jsonl.read_text() + json.dumps({"filename": rel, "caption": "x" * (33 << 20)}) + "\n")
    result = cli(*argv(str(jsonl), tmp_path / "p.h5", data["ckpt"]))
    assert result.exit_code == 2, result.output
    assert "a row is longer than 16 MiB (one row per image is expected)" in result.output
    csv.unlink()
    jsonl.unlink()
