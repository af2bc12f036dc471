"""``featdump show``: finished, partial, sharded, merged (virtual) and foreign files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import pytest

from conftest import FOUR_PHOTOS, photos_and_a_broken_one, run


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished gzip file with one failed image, and two shards of the same run."""
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    root = tmp_path_factory.mktemp("show")
    imgs = photos_and_a_broken_one(root / "imgs")
    runner = CliRunner()
    common = ["resnet18", str(imgs), "--no-pretrained", "--img-size", "64", "--out-indices", "1,2", "--quiet"]
    out = root / "feats.h5"
    res = runner.invoke(app, ["extract", *common, "-o", str(out), "--compression", "gzip"])
    assert res.exit_code == 0, res.output
    shards = root / "shards.h5"
    for i in (0, 1):
        res = runner.invoke(app, ["extract", *common, "-o", str(shards), "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
    return {
        "file": out,
        "shard0": root / "shards.shard-00000-of-00002.h5",
        "shard1": root / "shards.shard-00001-of-00002.h5",
    }


def test_show_table(cli, made: dict[str, Path]) -> None:
    res = cli("show", str(made["file"]))
    assert res.exit_code == 0, res.output
    text = res.stdout
    for expected in ("layer1", "layer2", "3×64×16×16", "gzip-1", "resnet18", "weights", "random", "broken.jpg",
                     "3 images", "1 failed", "complete", "provenance", "timm_version", "command", "stored/raw"):  # fmt: skip
        assert expected in text, expected


def test_show_json(made: dict[str, Path]) -> None:
    proc = run("show", str(made["file"]), "--json", check=True)
    info = json.loads(proc.stdout)  # nothing else on stdout
    assert info["complete"] is True and info["num_images"] == 3 and info["num_failed"] == 1
    assert info["failures"][0]["path"] == "broken.jpg" and "UnidentifiedImageError" in info["failures"][0]["error"]
    ds = {d["name"]: d for d in info["datasets"]}
    assert ds["layer2"]["shape"] == [3, 128, 8, 8] and ds["layer2"]["dtype"] == "float32"
    assert ds["layer2"]["compression"] == "gzip-1" and ds["layer2"]["chunks"][1:] == [128, 8, 8]
    assert ds["layer2"]["stored_bytes"] > 0 and ds["layer2"]["ratio"] > 0
    assert ds["layer2"]["attrs"]["reduction"] == 8
    attrs = info["attrs"]
    assert attrs["model"] == "resnet18" and attrs["weights"] == "random" and attrs["input_size"] == [3, 64, 64]
    assert attrs["format"] == "featdump" and attrs["format_version"] == 1 and "command" in attrs


def test_show_partial_file(cli, made: dict[str, Path], tmp_path: Path) -> None:
    part = tmp_path / "part.h5"
    shutil.copy(made["file"], part)
    with h5py.File(part, "r+") as f:  # what a killed run leaves: rows past num_images are uncommitted
        f.attrs["complete"] = False
        f.attrs["num_images"] = 2
    res = cli("show", str(part))
    assert res.exit_code == 0, res.output
    assert "NOT complete" in res.stdout and "(+1 uncommitted)" in res.stdout
    info = json.loads(cli("show", str(part), "--json").stdout)
    assert info["complete"] is False and info["num_images"] == 2
    assert {d["uncommitted_rows"] for d in info["datasets"]} == {1}


def test_show_shard(made: dict[str, Path], cli) -> None:
    info = json.loads(cli("show", str(made["shard1"]), "--json").stdout)
    assert info["shard"] == [1, 2] and info["num_images"] + info["num_failed"] == 2
    assert "shard 1/2" in cli("show", str(made["shard1"])).stdout


def _virtual(dest: Path, sources: list[Path]) -> None:
    """A merged file as HDF5 virtual datasets over shard files (relative source paths)."""
    with h5py.File(sources[0]) as first:
        attrs = dict(first.attrs)
        names = list(first["features"])
        shapes = {n: first["features"][n].shape[1:] for n in names}
        dtypes = {n: first["features"][n].dtype for n in names}
    counts = []
    for s in sources:
        with h5py.File(s) as f:
            counts.append(int(f.attrs["num_images"]))
    with h5py.File(dest, "w", libver="latest") as out:
        for k, v in attrs.items():
            out.attrs[k] = v
        out.attrs["num_images"] = sum(counts)
        out.attrs["num_failed"] = 0  # the failures are not copied: the counters must say so
        out.attrs["inputs_done"] = out.attrs["num_inputs"] = sum(counts)
        out.attrs["shard"] = [0, 1]
        paths = []
        for s in sources:
            with h5py.File(s) as f:
                paths += [p.decode() for p in f["paths"][:]]
        out.create_dataset("paths", data=paths, dtype=h5py.string_dtype())
        out.create_group("failed")
        out["failed"].create_dataset("paths", shape=(0,), dtype=h5py.string_dtype())
        out["failed"].create_dataset("errors", shape=(0,), dtype=h5py.string_dtype())
        group = out.create_group("features")
        for n in names:
            layout = h5py.VirtualLayout(shape=(sum(counts), *shapes[n]), dtype=dtypes[n])
            row = 0
            for s, c in zip(sources, counts, strict=True):
                layout[row : row + c] = h5py.VirtualSource(s.name, f"features/{n}", shape=(c, *shapes[n]))
                row += c
            group.create_virtual_dataset(n, layout, fillvalue=0)


@pytest.mark.slow
def test_show_merged_virtual_and_missing_sources(made: dict[str, Path], tmp_path: Path) -> None:
    import featdump
    from featdump.errors import FeatdumpError

    for key in ("shard0", "shard1"):
        shutil.copy(made[key], tmp_path / made[key].name)
    merged = tmp_path / "merged.h5"
    _virtual(merged, [tmp_path / made["shard0"].name, tmp_path / made["shard1"].name])
    proc = run("show", str(merged), "--json", check=True)
    info = json.loads(proc.stdout)
    assert info["virtual"] is True and info["missing_sources"] == []
    assert {d["compression"] for d in info["datasets"]} == {"virtual"}
    with featdump.open(merged) as f:
        assert f.numpy("layer1").shape[0] == 3 and f.numpy("layer1").any()

    (tmp_path / made["shard1"].name).unlink()
    proc = run("show", str(merged), env={"COLUMNS": "200"})
    assert proc.returncode == 1
    assert "MISSING" in proc.stdout and made["shard1"].name in proc.stdout
    assert "virtual source file(s)" in proc.stderr and "read as the fill value" in proc.stderr
    info = json.loads(run("show", str(merged), "--json").stdout)
    assert len(info["missing_sources"]) == 1 and made["shard1"].name in info["missing_sources"][0]
    with featdump.open(merged) as f, pytest.raises(FeatdumpError, match="missing"):
        f.numpy("layer1")


def test_show_foreign_files(cli, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1, 2, 3]
    res = cli("show", str(other))
    assert res.exit_code == 2
    assert "is an HDF5 file but not a featdump file" in res.stderr and "it holds: x" in res.stderr
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    res = cli("show", str(text))
    assert res.exit_code == 2 and "is not an HDF5 file" in res.stderr
    res = cli("show", str(tmp_path / "nope.h5"))
    assert res.exit_code == 2 and "no such file" in res.stderr


def test_show_real_merge(cli, made: dict[str, Path], tmp_path: Path) -> None:
    """A file written by `featdump merge` (virtual by default) reads like one run; a lost shard is reported."""
    shards = [tmp_path / made[k].name for k in ("shard0", "shard1")]
    for key, dest in zip(("shard0", "shard1"), shards, strict=True):
        shutil.copy(made[key], dest)
    merged = tmp_path / "all.h5"
    res = cli("merge", *map(str, shards), "-o", str(merged), "--quiet")
    assert res.exit_code == 0, res.output
    info = json.loads(cli("show", str(merged), "--json").stdout)
    assert info["virtual"] and info["num_images"] + info["num_failed"] == 4 and info["missing_sources"] == []
    with h5py.File(made["file"]) as whole:
        assert info["num_images"] == whole.attrs["num_images"]
    shards[0].unlink()
    res = cli("show", str(merged))
    assert res.exit_code == 1 and "missing" in res.stderr and shards[0].name in res.stderr


@pytest.mark.slow
def test_show_paths_and_whole_command(tmp_path, imgs, cli):
    out = tmp_path / "f.h5"
    long_dir = imgs.rename(tmp_path / ("a" * 120))
    run("extract", "resnet18", str(long_dir), "-o", str(out), "--no-pretrained", "-q", "--out-indices", "1", "--pool", "avg", check=True)
    res = cli("show", str(out), "--paths")
    assert res.stdout.split() == sorted(FOUR_PHOTOS)
    assert json.loads(cli("show", str(out), "--paths", "--json").stdout) == sorted(FOUR_PHOTOS)
    shown = re.sub(r"[\s│]", "", cli("show", str(out)).stdout)  # the provenance folds long values
    assert "a" * 120 in shown and "-o" + str(out) + "--no-pretrained-q--out-indices1--poolavg" in shown
