"""WebDataset tar shards as INPUTs (docs/inputs.md): grouping as webdataset reads it, brace
patterns, equal numbers to the unpacked folder, damaged shards, missing shards, families, sharding
by tar files + merge, ids, resume inside a shard (a real SIGKILL)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from braceexpand import braceexpand
from streamkit import (
    argv,
    assert_same_features,
    features,
    hand_tar,
    images_in_order,
    key_of,
    write_shards,
)

import featdump
from featdump.data.sources import TarSelection, open_source
from featdump.data.tars import read_samples
from featdump.errors import UsageError

from conftest import invoke
from faultkit import NO_MODEL, journal_seq, kill, make_images, popen


def _png(seed: int = 0, size: int = 32) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- patterns and grouping


def test_a_huge_brace_pattern_stops_at_its_first_missing_shard(cli, data: dict, tmp_path: Path) -> None:
    """Shards are looked up a chunk at a time, so the first missing one of a pattern of a million
    ends the run at once; a pattern of more than a million is refused before it is expanded."""
    import shutil
    import time

    for k in range(2):
        shutil.copy(data["root"] / "shards" / f"data-00000{k}.tar", tmp_path / f"x-{k:07d}.tar")
    started = time.monotonic()
    result = cli(*argv(str(tmp_path / "x-{0000000..0999999}.tar"), tmp_path / "o.h5", data["ckpt"]))
    assert result.exit_code == 2, result.output
    assert f"tar shard not found: {tmp_path}/x-0000002.tar (from the pattern" in result.output, result.output
    result = cli(*argv(str(tmp_path / "x-{00000000..99999999}.tar"), tmp_path / "o.h5", data["ckpt"]))
    assert result.exit_code == 2, result.output
    assert "names 100000000 tar shards, more than 1000000; give a smaller brace range" in result.output, result.output
    assert time.monotonic() - started < 30
    result = cli(*argv(str(tmp_path / "x-{0000000..0000001.tar"), tmp_path / "o.h5", data["ckpt"]))
    assert result.exit_code == 2 and "unbalanced braces; a shard pattern looks like" in result.output, result.output
    result = cli(*argv(str(tmp_path / "x-*.tar"), tmp_path / "o.h5", data["ckpt"]))  # a quoted glob
    assert result.exit_code == 2, result.output
    assert f"give the brace pattern '{tmp_path}/x-{{0000000..0000001}}.tar'" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("names", "pattern"),
    [
        (["w/data-000002.tar", "w/data-000000.tar", "w/data-000001.tar"], "w/data-{000000..000002}.tar"),
        (["s-8.tar.gz", "s-9.tar.gz", "s-10.tar.gz"], "s-{8..10}.tar.gz"),
        (["s-08.tar", "s-9.tar", "s-10.tar"], None),  # no range gives both s-08 and s-9
        (["s-08.tgz", "s-09.tgz", "s-10.tgz"], "s-{08..10}.tgz"),
        (["a.tar"], "a.tar"),
        (["p-000.tar", "p-002.tar"], None),  # a gap: the pattern would name a shard that is not there
        (["p-0.tar", "p-99999999.tar"], None),  # a gap of 10^8: seen without expanding the range
        (["p-000.tar", "q-001.tar"], None),
        (["p-000.tar", "p-001.tgz"], None),
        (["x.tar", "y.tar"], None),
    ],
)
def test_shard_pattern_expands_to_exactly_the_names(names: list[str], pattern: str | None) -> None:
    from featdump.data.tars import shard_pattern

    assert shard_pattern(names) == pattern
    if pattern is not None:
        assert sorted(braceexpand(pattern)) == sorted(names)  # braceexpand's reading of the pattern


def test_link_and_special_members_are_failures_not_lost(cli, data: dict, tmp_path: Path) -> None:
    """GNU tar stores a second copy of a file as a hard link; a stream cannot go back for its bytes.
    Such members (and symlinks, FIFOs) are /failed records naming them: they vanished without one."""
    import tarfile

    png = (data["root"] / "shards").glob("*.tar").__next__()
    with tarfile.open(png) as src:
        first = next(m for m in src.getmembers() if m.name.endswith((".png", ".jpg")))
        body = src.extractfile(first).read()  # type: ignore[union-attr]
    shard = tmp_path / "links.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("b.png")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for name, kind in (("c.png", tarfile.FIFOTYPE), ("e.png", tarfile.LNKTYPE), ("s.png", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "b.png" if kind != tarfile.FIFOTYPE else ""
            tar.addfile(info)
    result = cli(*argv(str(shard), tmp_path / "o.h5", data["ckpt"]))
    assert result.exit_code == 0, result.output
    with featdump.open(tmp_path / "o.h5") as f:
        assert f.paths == [f"{shard}/b.png"]
        assert f.failed == [
            (f"{shard}/c.png", "member c.png is a special file, not a regular file; tar the image itself"),
            (f"{shard}/e.png", "member e.png is a hard link to b.png, not a regular file; tar the image itself"),
            (f"{shard}/s.png", "member s.png is a symlink, not a regular file; tar the image itself"),
        ]


def test_a_folder_of_tar_shards_says_how_to_give_them(cli, tmp_path: Path) -> None:
    wds = tmp_path / "wds"
    wds.mkdir()
    for k in range(5):
        hand_tar(wds / f"data-{k:06d}.tar", [("a.png", _png(k))])
    out = tmp_path / "o.h5"
    result = cli(*argv(str(wds), out, Path("unused.safetensors")))
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(
        f"(looked recursively for: jpg jpeg png bmp gif tif tiff webp ppm pgm); it holds 5 tar shards (WebDataset): "
        f"give them as INPUTs, e.g. '{wds}/data-{{000000..000004}}.tar'"
    ), result.output
    (wds / "data-000002.tar").rename(wds / "extra.tar")  # no pattern names these: a shell glob does
    (wds / "more").mkdir()
    hand_tar(wds / "more" / "b.tgz", [("b.png", _png(9))], mode="w:gz")
    result = cli(*argv(str(wds), out, Path("unused.safetensors")))
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(f"it holds 6 tar shards (WebDataset): give them as INPUTs, e.g. {wds}/*.tar {wds}/more/*.tgz")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(*argv(str(empty), out, Path("unused.safetensors")))
    assert result.exit_code == 2 and result.output.strip().endswith("ppm pgm)"), result.output


def test_samples_group_as_webdataset_reads_them(tmp_path: Path) -> None:
    import webdataset as wds

    png = _png()
    shard = hand_tar(
        tmp_path / "hand.tar",
        [
            ("dir/", b""),
            ("__meta__", b"skipped"),
            ("dir/a.json", b"{}"),
            ("dir/a.PNG", png),  # the first image member, whatever comes before it
            ("dir/a.seg.png", b"second image: not the sample's image"),
            ("noext", b"skipped: no extension"),
            ("b.txt", b"no image here"),
            ("c.d.jpg", png),  # key up to the first dot of the base name
        ],
    )
    got = list(read_samples(str(shard)))
    assert [(s.key, s.member, s.error != "") for s in got] == [
        ("dir/a", "dir/a.PNG", False),
        ("b", "", True),
        ("c", "c.d.jpg", False),
    ]
    assert got[0].data == png and got[2].data == png
    assert "has no image member" in got[1].error and ".txt" in got[1].error
    # webdataset's own reader sees the same samples, keys and image bytes
    theirs = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    assert len(theirs) == len(got)
    for mine, their in zip(got, theirs, strict=True):
        assert mine.key == their["__key__"]
    assert theirs[0]["png"] == png and theirs[2]["d.jpg"] == png


def test_gzip_tar_is_streamed(tmp_path: Path) -> None:
    png = _png(1)
    shard = hand_tar(tmp_path / "s.tar.gz", [("k1.png", png), ("k2.png", png)], mode="w:gz")
    assert [(s.key, s.data == png) for s in read_samples(str(shard))] == [("k1", True), ("k2", True)]


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, random_checkpoint) -> dict:
    root = tmp_path_factory.mktemp("tar")
    images = make_images(root / "images", 24, seed=5)
    shards = write_shards(images, root / "shards", per_shard=4)  # 6 shards
    ckpt = random_checkpoint("resnet18")
    folder_out = root / "folder.h5"
    res = invoke(*argv(str(images), folder_out, ckpt))
    assert res.exit_code == 0, res.output
    return {"root": root, "images": images, "shards": shards, "ckpt": ckpt, "folder": features(folder_out)}


@pytest.mark.slow
def test_tar_shards_equal_the_unpacked_folder(cli, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "tar.h5"
    pattern = str(data["root"] / "shards" / "data-{000000..000005}.tar")
    result = cli(*argv(pattern, out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got = features(out)
    order = images_in_order(data["images"])
    assert len(got["paths"]) == len(order) == 24
    shard_of = [data["shards"][i // 4] for i in range(24)]
    keys = [key_of(data["images"], p) for p in order]
    assert got["paths"] == [f"{s}/{k}.png" for s, k in zip(shard_of, keys, strict=True)]
    assert got["ids"] == keys
    assert got["failed"] == [] and got["failed_ids"] == []
    assert got["attrs"]["input_kind"] == "tar" and got["attrs"]["num_inputs"] == 6
    assert_same_features(got, data["folder"])
    with featdump.open(out) as f:
        assert f.ids == keys
        assert f.row_of_id(keys[7]) == 7
        with pytest.raises(KeyError):
            f.row_of_id("nope")
    with featdump.open(data["root"] / "folder.h5") as f:
        assert f.ids is None


def test_damaged_shard_keeps_what_came_before_and_goes_on(cli, data: dict, tmp_path: Path) -> None:
    shards = [Path(shutil.copy(s, tmp_path)) for s in data["shards"][:3]]
    raw = shards[1].read_bytes()
    shards[1].write_bytes(raw[: len(raw) // 2 + 700])  # cut inside the third sample
    # shard 2: corrupt (garbage) where its third sample should start: the second one, being read, goes too
    raw2 = shards[2].read_bytes()
    offsets = [s for s in read_samples_offsets(shards[2])]
    cut = offsets[2]
    shards[2].write_bytes(raw2[:cut] + b"\x17garbage" * 200)
    out = tmp_path / "damaged.h5"
    result = cli(*argv([str(s) for s in shards], out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got = features(out)
    keys = got["ids"]
    assert len(got["failed"]) == 2
    assert got["failed"][0].startswith(f"{shards[1]}@") and got["failed"][1] == f"{shards[2]}@{offsets[1]}"
    assert all("rest of the shard unreadable" in e for e in got["errors"])
    assert got["failed_ids"] == ["", ""]
    full = data["folder"]
    # 4 samples of shard 0; shard 1 up to the damage (>= 1); shard 2: its first sample
    n1 = len([p for p in got["paths"] if p.startswith(f"{shards[1]}/")])
    assert 1 <= n1 < 4
    want_rows = list(range(4)) + list(range(4, 4 + n1)) + [8]
    assert keys == [data["folder"]["paths"][i].replace("/", "_")[:-4] for i in want_rows]
    for name, arr in got["features"].items():
        assert arr.shape[0] == len(want_rows)
        assert np.array_equal(arr, full["features"][name][want_rows]), name


def read_samples_offsets(shard: Path) -> list[int]:
    import tarfile

    with tarfile.open(shard) as tf:
        starts, seen = [], set()
        for m in tf.getmembers():
            key = m.name.split(".", 1)[0]
            if key not in seen:
                seen.add(key)
                starts.append(m.offset)
    return starts


def test_sample_without_image_is_a_failed_record_with_its_id(cli, data: dict, tmp_path: Path) -> None:
    png = _png(2)
    shard = hand_tar(tmp_path / "s.tar", [("a.png", png), ("a.cls", b"1"), ("b.cls", b"2"), ("c.png", png)])
    out = tmp_path / "o.h5"
    result = cli(*argv(str(shard), out, data["ckpt"]))
    assert result.exit_code == 0, result.output
    got = features(out)
    assert got["paths"] == [f"{shard}/a.png", f"{shard}/c.png"] and got["ids"] == ["a", "c"]
    assert got["failed"] == [f"{shard}/b"] and got["failed_ids"] == ["b"]
    assert "no image member" in got["errors"][0]
    assert got["attrs"]["inputs_done"] == 3


def test_missing_shard_is_a_usage_error_before_the_model_loads(cli, data: dict, tmp_path: Path, monkeypatch) -> None:
    pattern = str(data["root"] / "shards" / "data-{000000..000007}.tar")
    out = tmp_path / "o.h5"
    result = cli(*argv(pattern, out, data["ckpt"], model=NO_MODEL))
    assert result.exit_code == 2
    assert "tar shard not found:" in result.output and "data-000006.tar" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "given, message",
    [
        (["data-000000.tar", "data-000000.tar"], "tar shard {d}/data-000000.tar is named twice, by the INPUTs {d}/data-000000.tar and {d}/data-000000.tar:"),
        (["data-{000000..000001}.tar", "data-{000001..000002}.tar"], "tar shard {d}/data-000001.tar is named twice, by the INPUTs {d}/data-{{000000..000001}}.tar and {d}/data-{{000001..000002}}.tar:"),
        (["data-{000000,000000}.tar"], "tar shard {d}/data-000000.tar is named twice, by the pattern {d}/data-{{000000,000000}}.tar:"),
        (["data-000001.tar", "../shards/data-00000{0..1}.tar"], "tar shard {d}/data-000001.tar is named twice, by the INPUTs {d}/data-000001.tar and {d}/../shards/data-00000{{0..1}}.tar (the second time as {d}/../shards/data-000001.tar):"),
    ],
)  # fmt: skip
def test_a_shard_named_twice_is_a_usage_error_naming_the_inputs(
    cli, data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str], message: str
) -> None:
    """docs/inputs.md: the same stored path twice is a usage error naming both sources; a shard named
    twice would store every sample twice."""
    import featdump.data.sources as sources
    monkeypatch.setattr(sources, "stat_input", lambda name: pytest.fail("a shard was looked up"))
    d = data["root"] / "shards"
    out = tmp_path / "o.h5"
    result = cli(*argv([f"{d}/{g}" for g in given], out, data["ckpt"], model=NO_MODEL))
    assert result.exit_code == 2, result.output
    assert message.format(d=d) in result.output and "its samples would be stored twice" in result.output, result.output
    assert not out.exists()


def test_mixing_families_is_a_usage_error(cli, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    result = cli(*argv([str(data["shards"][0]), str(data["images"])], out, data["ckpt"]))
    assert result.exit_code == 2
    assert "INPUTs mix kinds" in result.output
    result = cli(*argv([str(data["shards"][0])], out, data["ckpt"], "--id-column", "id"))
    assert result.exit_code == 2 and "--id-column applies to a table INPUT" in result.output
    assert not out.exists()


@pytest.mark.slow
def test_sharding_splits_tar_files_and_merge_equals_one_run(cli, data: dict, tmp_path: Path, monkeypatch) -> None:
    import featdump.data.tars as tars

    opened: list[str] = []
    real = tars.open_input

    def spy(path: str):  # noqa: ANN202
        opened.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(tars, "open_input", spy)
    inputs = [str(s) for s in data["shards"]]
    one = tmp_path / "one.h5"
    assert cli(*argv(inputs, one, data["ckpt"])).exit_code == 0
    opened.clear()
    parts = []
    for i in range(3):
        result = cli(*argv(inputs, tmp_path / "part.h5", data["ckpt"], "--shard", f"{i}/3"))
        assert result.exit_code == 0, result.output
        assert opened == [f"data-{2 * i:06d}.tar", f"data-{2 * i + 1:06d}.tar"]  # only its own tar files
        opened.clear()
        parts.append(str(tmp_path / f"part.shard-{i:05d}-of-00003.h5"))
    merged = tmp_path / "merged.h5"
    result = cli("merge", *parts, "-o", str(merged), "--copy")
    assert result.exit_code == 0, result.output
    a, b = features(merged), features(one)
    assert a["paths"] == b["paths"] and a["ids"] == b["ids"] and a["failed"] == b["failed"]
    assert_same_features(a, b)


@pytest.mark.parametrize(
    ("samples", "files", "complete", "done", "words"),
    [
        (30, 3, True, 3, "30 samples read from 3 tar shards"),
        (4, 1, True, None, "4 samples read from 1 tar shard"),
        (8, 3, False, 1, "8 samples read, 1 of 3 tar shards done"),
        (8, 3, False, None, "8 samples read (3 tar shards)"),
    ],
)
def test_tar_progress_says_samples_and_tar_files_apart(samples: int, files: int, complete: bool, done, words: str) -> None:
    from featdump.store.check import tar_progress

    assert tar_progress(samples, files, complete, done) == words


@pytest.mark.slow
def test_show_and_merge_count_samples_of_tar_shards(cli, data: dict, tmp_path: Path) -> None:
    """inputs_done counts samples and num_inputs tar files: show and merge say both, never
    "24 of 6 inputs done"; a file with more samples than tar files is not taken for a damaged one."""
    import h5py

    inputs = [str(s) for s in data["shards"]]
    parts = []
    for i in range(2):
        result = cli(*argv(inputs, tmp_path / "part.h5", data["ckpt"], "--shard", f"{i}/2"))
        assert result.exit_code == 0, result.output
        parts.append(str(tmp_path / f"part.shard-{i:05d}-of-00002.h5"))
    result = cli("show", parts[0])
    assert result.exit_code == 0, result.output
    assert "12 images · 0 failed, 12 samples read from 3 tar shards · shard 0/2" in result.output, result.output
    merged = tmp_path / "merged.h5"
    result = cli("merge", *parts, "-o", str(merged))
    assert result.exit_code == 0, result.output
    assert "24 images, 0 failed · 24 samples read from 6 tar shards · merged from 2 shards · complete" in result.output
    assert "24 samples read from 6 tar shards" in cli("show", str(merged)).output

    with h5py.File(parts[1], "r+") as f:  # as a run killed 2 samples into its second tar file leaves it
        f.attrs["complete"], f.attrs["stream_mark"] = False, [1, 2]
    result = cli("merge", *parts, "-o", str(tmp_path / "partial.h5"))
    assert result.exit_code == 2, result.output
    assert "is not complete (12 samples read, 1 of 3 tar shards done)" in result.output, result.output
    result = cli("merge", *parts, "-o", str(tmp_path / "partial.h5"), "--allow-partial")
    assert result.exit_code == 0, result.output
    assert "24 samples read (6 tar shards) · merged from 2 shards · NOT complete" in result.output, result.output
    result = cli("show", str(tmp_path / "partial.h5"))
    assert "24 samples read (6 tar shards)" in result.output, result.output


def test_stream_resumes_inside_a_shard_without_opening_finished_ones(data: dict, monkeypatch) -> None:
    import featdump.data.tars as tars

    sel = open_source([str(s) for s in data["shards"]]).select(0, 1)
    assert isinstance(sel, TarSelection) and sel.length is None
    full = list(sel.stream())
    assert len(full) == 24
    assert full[5].mark == (1, 2) and full[7].mark == (2, 0)  # the last sample of a shard points past it
    opened: list[str] = []
    real = tars.open_input
    monkeypatch.setattr(tars, "open_input", lambda p: (opened.append(Path(p).name), real(p))[1])
    rest = list(sel.stream(10, full[9].mark))
    assert opened[0] == "data-000002.tar"  # shards 0 and 1 are not read again
    assert [r.path for r in rest] == [r.path for r in full[10:]]
    assert [r.data for r in rest] == [r.data for r in full[10:]]


def test_peak_memory_of_a_stream_is_flat_in_the_number_of_shards(tmp_path: Path) -> None:
    import tracemalloc

    png = _png(3, 16)
    for i in range(400):
        hand_tar(tmp_path / f"s-{i:04d}.tar", [(f"k{i}_{j}.png", png) for j in range(3)])

    def peak(n: int) -> int:
        sel = open_source([str(tmp_path / f"s-{{0000..{n - 1:04d}}}.tar")]).select(0, 1)
        tracemalloc.start()
        count = sum(1 for _ in sel.stream())
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == 3 * n
        return top

    small, big = peak(100), peak(400)
    assert big <= 1.1 * small + 64 * 1024, (small, big)


@pytest.mark.slow
def test_sigkill_inside_a_shard_then_resume_equals_the_clean_run(data: dict, tmp_path: Path) -> None:
    inputs = [str(s) for s in data["shards"]]
    clean = tmp_path / "clean.h5"
    res = invoke(*argv(inputs, clean, data["ckpt"], "--batch-size", "1", "--keep", "cls"))
    assert res.exit_code == 0, res.output
    out = tmp_path / "killed.h5"
    proc = popen(argv(inputs, out, data["ckpt"], "--batch-size", "1", "--keep", "cls"))
    from faultkit import wait_for

    assert wait_for(lambda: journal_seq(out) >= 7, proc), proc.communicate()[1]
    kill(proc)
    proc.communicate(timeout=60)
    done = features_committed(out)
    assert 0 < done < 24
    res = invoke(*argv(inputs, out, data["ckpt"], "--batch-size", "1", "--keep", "cls", "--resume"))
    assert res.exit_code == 0, res.output
    a, b = features(out), features(clean)
    assert a["attrs"]["complete"] and a["paths"] == b["paths"] and a["ids"] == b["ids"]
    with featdump.open(out) as f, featdump.open(clean) as g:  # --keep: each row's own value, none shifted
        assert f.kept == g.kept and len(set(f.kept["cls"])) == len(f.paths)
    assert a["failed"] == b["failed"]
    assert_same_features(a, b)


def features_committed(out: Path) -> int:
    from faultkit import committed_rows

    return committed_rows(out)["inputs_done"]



def test_dataloader_workers_decode_a_stream_like_the_threads(data: dict) -> None:
    """GPU runs use DataLoader worker processes: the streamed (position, ref) keys travel to them
    with their bytes, and batches come back in order with the refs the job needs."""
    from types import SimpleNamespace

    from timm.data import create_transform

    from featdump.data.batching import Loader

    transform = create_transform(input_size=(3, 64, 64), crop_pct=0.875, is_training=False)
    data_config = {"input_size": (3, 64, 64), "crop_pct": 0.875, "crop_mode": "center"}
    backbone = SimpleNamespace(data=SimpleNamespace(transform=lambda: transform, size_mode=None, **data_config))
    cfg = SimpleNamespace(decode="cpu", fast_decode=False, max_image_pixels=None, max_image_bytes=1 << 20)
    sel = open_source([str(s) for s in data["shards"]]).select(0, 1)

    def batches(device_type: str, workers: int) -> list:
        loader = Loader(sel.stream(), backbone, cfg, SimpleNamespace(type=device_type), 5, workers, 2)
        return list(loader)

    threads, procs = batches("cpu", 2), batches("meta", 2)  # "meta": any non-CPU device takes the DataLoader path
    assert len(threads) == len(procs) == 5
    for a, b in zip(threads, procs, strict=True):
        assert (a.positions, a.paths, a.ids, a.inputs_done, a.mark) == (b.positions, b.paths, b.ids, b.inputs_done, b.mark)
        assert np.array_equal(a.pixels.numpy(), b.pixels.numpy())


# --------------------------------------------------------------------------- disk planning for streams


def test_count_samples_from_headers_agrees_with_reading(tmp_path: Path) -> None:
    """Headers alone give as many samples as reading the shard (sidecars, folders, __meta__ and a
    sample without an image included); remote and compressed shards are not counted."""
    from featdump.data.tars import count_samples

    members = [("d/", b""), ("__meta__", b"m"), ("d/a.png", _png(1)), ("d/a.cls", b"1"), ("d/b.json", b"{}"),
               ("d/c.x.y.png", _png(2)), ("d/c.x.y.txt", b"t")]
    shard = hand_tar(tmp_path / "s.tar", members)
    assert count_samples(str(shard)) == len(list(read_samples(str(shard)))) == 3
    assert count_samples(f"file://{shard}") == 3
    assert count_samples(str(hand_tar(tmp_path / "s.tar.gz", members, "w:gz"))) is None
    assert count_samples("http://127.0.0.1:9/s.tar") is None


def test_space_check_estimates_tar_streams(tmp_path: Path, monkeypatch) -> None:
    """Tar shards: the image count is estimated from the first shard's headers and the shards'
    bytes, and the check refuses with 'about N images'; without an estimate it warns."""
    import warnings

    from featdump.configure import resolve
    from featdump.run import space

    images = make_images(tmp_path / "imgs", 12, seed=3)
    write_shards(images, tmp_path / "wds", 4)
    cfg = resolve({"model": "resnet18", "inputs": (str(tmp_path / "wds" / "data-{000000..000002}.tar"),),
                   "output": str(tmp_path / "o.h5"), "img_size": "2048"})
    selection = open_source(cfg.inputs, cfg).select(0, 1)
    assert selection.length is None
    n, how = selection.estimated_length()
    assert 11 <= n <= 13 and "4 samples in" in how and "3 shard(s)" in how
    from featdump.store import format as store_format  # where the free space is asked for

    monkeypatch.setattr(store_format.os, "statvfs", lambda p: type("S", (), {"f_bavail": 1, "f_frsize": 1 << 20})())
    with pytest.raises(UsageError, match=r"not enough space for the output: about 1[123] images \(4 samples in"):
        space.check_space(cfg, tmp_path / "o.h5", selection)
    gz = hand_tar(tmp_path / "data.tar.gz", [("a.png", _png(1)), ("b.png", _png(2))], "w:gz")
    cfg = resolve({**{k: getattr(cfg, k) for k in ("model", "output", "img_size")}, "inputs": (str(gz),)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert space.check_space(cfg, tmp_path / "o.h5", open_source(cfg.inputs, cfg).select(0, 1)) is None
    assert any("disk space not checked" in str(w.message) for w in caught)


@pytest.mark.parametrize("device_type", ["cpu", "meta"])  # threads, DataLoader worker processes
def test_a_stream_that_fails_hands_out_the_whole_batches_read_first(data: dict, device_type: str) -> None:
    """A remote store gone mid-stream: every whole batch read before the failure comes out decoded
    (the refs of the batch it cut are dropped: --resume must cut the same batches as an
    uninterrupted run), and only then the loader raises the error."""
    from types import SimpleNamespace

    from timm.data import create_transform

    from featdump.data.batching import Loader
    from featdump.errors import FeatdumpError

    transform = create_transform(input_size=(3, 64, 64), crop_pct=0.875, is_training=False)
    data_config = {"input_size": (3, 64, 64), "crop_pct": 0.875, "crop_mode": "center"}
    backbone = SimpleNamespace(data=SimpleNamespace(transform=lambda: transform, size_mode=None, **data_config))
    cfg = SimpleNamespace(decode="cpu", fast_decode=False, max_image_pixels=None, max_image_bytes=1 << 20)
    sel = open_source([str(s) for s in data["shards"]]).select(0, 1)
    read = 13  # not a whole number of batches of 5

    def failing() -> Iterator[Any]:
        for k, ref in enumerate(sel.stream()):
            if k == read:
                raise FeatdumpError("cannot read the rest (store gone)")
            yield ref

    got: list[Any] = []
    loader = Loader(failing(), backbone, cfg, SimpleNamespace(type=device_type), 5, 2, 2)
    with pytest.raises(FeatdumpError, match="store gone"):
        for batch in loader:
            got.append(batch)
    assert [b.inputs_done for b in got] == [5, 10]
    assert [p for b in got for p in b.positions] == list(range(10))
    assert all(b.pixels.shape[0] == len(b.positions) for b in got)
