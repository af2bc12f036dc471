"""`featdump merge`: virtual and --copy files equal a single run; every refusal names the shard."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import featdump
from featdump.cli.commands import app
from featdump.errors import UsageError
from featdump.store.vds import check_sources, missing_sources

from clusterkit import FAST, assert_rows_of_shards, assert_same_as_single, make_images, read

pytestmark = pytest.mark.slow  # its fixture runs eleven extractions


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _extract(images: Path, out: Path, ckpt: Path, *extra: str) -> None:
    result = _cli("extract", "resnet18", str(images), "-o", str(out), "--checkpoint", str(ckpt), *FAST, *extra)
    assert result.exit_code == 0, result.output


def shard_name(folder: Path, i: int, n: int = 3) -> Path:
    return folder / f"feats.shard-{i:05d}-of-{n:05d}.h5"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> dict[str, Path]:
    """8 images (one broken) as a single run and as 3 shards, plus shards of other runs to refuse."""
    root = tmp_path_factory.mktemp("merge")
    ckpt = random_checkpoint("resnet18")
    images = make_images(root / "images", 8, broken=(5,))
    _extract(images, root / "single.h5", ckpt, "--shard", "0/1")
    shards = root / "shards"
    shards.mkdir()
    for i in range(3):
        _extract(images, shards / "feats.h5", ckpt, "--shard", f"{i}/3")
    other = root / "other"
    other.mkdir()
    _extract(images, other / "f16.h5", ckpt, "--shard", "2/3", "--dtype", "float16")  # other settings
    _extract(images, other / "two.h5", ckpt, "--shard", "0/2")  # another shard count
    more = make_images(root / "more", 9, broken=(5,))  # the same images and one more
    _extract(more, other / "more.h5", ckpt, "--shard", "2/3")
    few = make_images(root / "few", 2)  # more shards than images: shard 2 of 3 is empty
    _extract(few, root / "few-single.h5", ckpt, "--shard", "0/1")
    (root / "few-shards").mkdir()
    for i in range(3):
        _extract(few, root / "few-shards" / "feats.h5", ckpt, "--shard", f"{i}/3")
    return {
        "root": root,
        "single": root / "single.h5",
        "shards": shards,
        "f16": other / "f16.shard-00002-of-00003.h5",
        "two": other / "two.shard-00000-of-00002.h5",
        "more": other / "more.shard-00002-of-00003.h5",
        "few_single": root / "few-single.h5",
        "few_shards": root / "few-shards",
    }


def _shards(run: dict[str, Path]) -> list[str]:
    return [str(shard_name(run["shards"], i)) for i in range(3)]


def test_virtual_and_copy_equal_a_single_run(run: dict[str, Path], tmp_path: Path) -> None:
    shards = _shards(run)
    virtual = run["shards"] / "all.h5"
    result = _cli("merge", *reversed(shards), "-o", str(virtual))  # any order on the command line
    assert result.exit_code == 0, result.output
    assert "7 images, 1 failed, of 8 from 3 shards" in result.output and "virtual" in result.output
    assert_same_as_single(virtual, run["single"])
    assert_rows_of_shards(virtual, [Path(p) for p in shards])
    copied = tmp_path / "copy.h5"
    result = _cli("merge", *shards, "-o", str(copied), "--copy")
    assert result.exit_code == 0, result.output
    assert_same_as_single(copied, run["single"])
    assert_rows_of_shards(copied, [Path(p) for p in shards])

    with h5py.File(virtual, "r") as v, h5py.File(copied, "r") as c:
        assert all(ds.is_virtual for ds in v["features"].values())
        assert not any(ds.is_virtual for ds in c["features"].values())
        names = {m.file_name for ds in v["features"].values() for m in ds.virtual_sources()}
        assert names == {f"feats.shard-0000{i}-of-00003.h5" for i in range(3)}  # relative to the merged file
        assert v.attrs["shard"].tolist() == c.attrs["shard"].tolist() == [0, 1]
        assert v.attrs["merge"] == "virtual" and c.attrs["merge"] == "copy"
        assert v.attrs["merged_from"].tolist() == sorted(names)
    assert virtual.stat().st_size < copied.stat().st_size / 4  # no copy of the features
    assert missing_sources(virtual) == [] and missing_sources(copied) == []
    virtual.unlink()


def test_virtual_file_still_reads_after_the_folder_moves(run: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "before"
    shutil.copytree(run["shards"], folder)
    assert _cli("merge", *sorted(str(p) for p in folder.glob("*.shard-*.h5")), "-o", str(folder / "all.h5")).exit_code == 0
    moved = tmp_path / "elsewhere" / "after"
    moved.parent.mkdir()
    folder.rename(moved)
    assert missing_sources(moved / "all.h5") == []
    assert_same_as_single(moved / "all.h5", run["single"])


def test_shards_in_a_folder_with_percent_signs(run: dict[str, Path], tmp_path: Path) -> None:
    """HDF5 reads %b in a virtual source name as a pattern; featdump escapes it."""
    shards = tmp_path / "run 100%b done"
    shutil.copytree(run["shards"], shards)
    merged = tmp_path / "all.h5"
    assert _cli("merge", *sorted(str(p) for p in shards.glob("*.shard-*.h5")), "-o", str(merged)).exit_code == 0
    assert missing_sources(merged) == []
    assert read(merged)["attrs"]["merged_from"][0] == "run 100%b done/feats.shard-00000-of-00003.h5"
    assert_same_as_single(merged, run["single"])


def test_missing_source_file_is_detected_not_read_as_zeros(run: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "f"
    shutil.copytree(run["shards"], folder)
    merged = folder / "all.h5"
    assert _cli("merge", *sorted(str(p) for p in folder.glob("*.shard-*.h5")), "-o", str(merged)).exit_code == 0
    gone = shard_name(folder, 1)
    gone.unlink()
    assert missing_sources(merged) == [f"{gone}: file not found"]
    problems = check_sources(merged)
    assert {p.source for p in problems} == {str(gone)} and len(problems) == len(read(run["single"])["features"])
    with h5py.File(shard_name(folder, 0), "r") as h5:
        start = int(h5.attrs["num_images"])  # shard 1's rows follow shard 0's (2: one image failed)
    with h5py.File(merged, "r") as h5:
        layer = h5["features"][next(iter(h5["features"]))][:]
    stop = start + 3
    assert np.isnan(layer[start:stop]).all()  # the fill value is NaN: a missing source cannot pass for data
    assert not np.isnan(layer[:start]).any() and not np.isnan(layer[stop:]).any()
    # a shard overwritten by a shorter one is caught too
    shutil.copy(shard_name(folder, 0), gone)
    first = next(iter(read(run["single"])["features"]))
    assert check_sources(merged)[0].reason == f"holds {start} rows of features/{first}, the merged file maps 3"
    # and one overwritten by an HDF5 file that is not a featdump shard is refused outright (never read)
    with h5py.File(gone, "w") as h5:
        h5.create_dataset("features/layer1", data=np.zeros((1, 1)))
    assert {(p.reason, p.refused) for p in check_sources(merged)} == {
        ('not a featdump file (no format="featdump" attribute)', True)
    }


def test_a_shard_extracted_again_after_the_merge_is_refused_naming_it(run: dict[str, Path], tmp_path: Path) -> None:
    """A virtual file reads its shards at read time: one replaced by a run with other settings, or over
    other images, is refused by every reader (it was read silently: another model's rows, or the rows of
    other images under the stored paths)."""
    folder = tmp_path / "f"
    shutil.copytree(run["shards"], folder)
    merged = folder / "all.h5"
    assert _cli("merge", *sorted(str(p) for p in folder.glob("*.shard-*.h5")), "-o", str(merged)).exit_code == 0
    again = shard_name(folder, 2)
    for other, said in ((run["f16"], 'made with dtype="float16", the merged file with dtype="float32"'),
                        (run["two"], "its rows hold other images now")):  # fmt: skip
        shutil.copy(other, again)
        problems = check_sources(merged)
        assert [(p.source, p.refused) for p in problems] == [(str(again), True)] and said in problems[0].reason
        with pytest.raises(UsageError, match="refusing to read its virtual dataset"):
            featdump.open(merged)
    shutil.copy(shard_name(run["shards"], 2), again)  # the same shard back: read as before
    assert check_sources(merged) == []


def test_empty_shards_are_skipped(run: dict[str, Path], tmp_path: Path) -> None:
    shards = sorted(str(p) for p in run["few_shards"].glob("*.shard-*.h5"))
    for extra in ((), ("--copy",)):
        out = tmp_path / f"few{len(extra)}.h5"
        result = _cli("merge", *shards, "-o", str(out), *extra)
        assert result.exit_code == 0, result.output
        assert "skipped" in result.output and "feats.shard-00002-of-00003.h5: no rows" in result.output
        assert_same_as_single(out, run["few_single"])
        assert_rows_of_shards(out, [Path(p) for p in shards])


def _refused(*args: str) -> str:
    result = _cli("merge", *args)
    assert result.exit_code == 2, result.output
    return result.output


def test_refuses_a_missing_shard_naming_it(run: dict[str, Path], tmp_path: Path) -> None:
    s = _shards(run)
    out = _refused(s[0], s[2], "-o", str(tmp_path / "m.h5"))
    assert f"shard 1 of 3 is missing: {shard_name(run['shards'], 1)}" in out
    assert not (tmp_path / "m.h5").exists()


def test_refuses_duplicates(run: dict[str, Path], tmp_path: Path) -> None:
    s = _shards(run)
    assert f"{s[0]} is given twice" in _refused(*s, s[0], "-o", str(tmp_path / "m.h5"))
    twin = tmp_path / "copy-of-shard-0.h5"
    shutil.copy(s[0], twin)
    out = _refused(*s, str(twin), "-o", str(tmp_path / "m.h5"))
    assert f"{twin} and {s[0]} are both shard 0 of 3 over the same images (the same rows twice)" in out
    with h5py.File(twin, "r+") as h5:  # the same images with another setting: that is what to say
        h5.attrs["crop_pct"] = 0.5
    out = _refused(*s, str(twin), "-o", str(tmp_path / "m.h5"))
    assert "crop_pct=0.5" in out and "they cover the same images, so they cannot be merged" in out


def test_refuses_other_settings_input_lists_and_shard_counts(run: dict[str, Path], tmp_path: Path) -> None:
    s = _shards(run)
    out = _refused(s[0], s[1], str(run["f16"]), "-o", str(tmp_path / "m.h5"))
    assert f'{run["f16"]} was made with dtype="float16", {s[0]} with dtype="float32"' in out
    out = _refused(s[0], s[1], str(run["more"]), "-o", str(tmp_path / "m.h5"))
    assert f"{run['more']} was made from another input list than {s[0]} (9 vs 8 images" in out
    out = _refused(s[0], s[1], s[2], str(run["two"]), "-o", str(tmp_path / "m.h5"))
    assert f"{run['two']} is shard 0 of 2, but {s[0]} is of 3" in out


def test_incomplete_shard_is_refused_unless_allow_partial(run: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(run["shards"], folder)
    unfinished = shard_name(folder, 1)
    with h5py.File(unfinished, "r+") as h5:  # what a killed task leaves: rows past the last commit don't count
        h5.attrs["complete"] = False
        h5.attrs["num_images"] = 1
        h5.attrs["inputs_done"] = 1
    shards = [str(shard_name(folder, i)) for i in range(3)]
    out = _refused(*shards, "-o", str(folder / "all.h5"))
    assert f"{unfinished} is not complete (1 of 3 inputs done)" in out and "--allow-partial" in out

    result = _cli("merge", *shards, "-o", str(folder / "all.h5"), "--allow-partial")
    assert result.exit_code == 0, result.output
    merged, single = read(folder / "all.h5"), read(run["single"])
    # rows: shard 0 holds 2 (its third input is the broken image), shard 1 its first 1 of 3, shard 2 its 2
    assert merged["attrs"]["complete"] is False and merged["attrs"]["num_images"] == 5
    assert merged["paths"] == single["paths"][:3] + single["paths"][5:]
    # the shard resumes on its own; merged again, the result equals the single run
    with h5py.File(unfinished, "r") as h5:
        ckpt = h5.attrs["weights"].split(" ")[0].removeprefix("checkpoint:")
    _extract(run["root"] / "images", folder / "feats.h5", Path(ckpt), "--shard", "1/3", "--resume")
    assert _cli("merge", *shards, "-o", str(folder / "all.h5"), "--overwrite").exit_code == 0
    assert_same_as_single(folder / "all.h5", run["single"])


def test_refuses_outputs_it_must_not_touch(run: dict[str, Path], tmp_path: Path) -> None:
    s = _shards(run)
    existing = tmp_path / "exists.h5"
    existing.write_bytes(b"keep me")
    assert f"{existing} exists; pass --overwrite" in _refused(*s, "-o", str(existing))
    assert existing.read_bytes() == b"keep me"
    assert "is one of the shards" in _refused(*s, "-o", s[1])
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    assert f"{not_h5} is not an HDF5 file" in _refused(*s[:2], str(not_h5), "-o", str(tmp_path / "m.h5"))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as h5:
        h5["x"] = [1]
    assert f"{plain} is not a featdump file" in _refused(*s[:2], str(plain), "-o", str(tmp_path / "m.h5"))
    assert f"shard not found: {tmp_path / 'nope.h5'}" in _refused(str(tmp_path / "nope.h5"), "-o", str(tmp_path / "m.h5"))
    merged = tmp_path / "merged.h5"
    assert _cli("merge", *s, "-o", str(merged)).exit_code == 0
    assert "is itself a merged file" in _refused(str(merged), "-o", str(tmp_path / "again.h5"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left behind


def test_merged_file_cannot_be_resumed(run: dict[str, Path], tmp_path: Path) -> None:
    merged = tmp_path / "m.h5"
    assert _cli("merge", *_shards(run), "-o", str(merged)).exit_code == 0
    with h5py.File(merged, "r") as h5:
        ckpt = h5.attrs["weights"].split(" ")[0].removeprefix("checkpoint:")
    result = _cli(
        "extract", "resnet18", str(run["root"] / "images"), "-o", str(merged), "--checkpoint", ckpt, *FAST, "--resume"
    )
    assert result.exit_code == 2
    assert "was made by `featdump merge`" in result.output
