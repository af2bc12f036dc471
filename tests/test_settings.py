"""Settings across files: what a file records, what `--resume` and `merge` refuse when one differs,
and shards that agree merging (virtually and with --copy) into what one run writes.

Every setting that changes what the rows mean is made once with one value and once with another,
in real runs of a tiny model; the list is written here, not taken from the option table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from featdump.cli.commands import app

from clusterkit import assert_rows_of_shards, assert_same_as_single, make_images

FAST = ("--img-size", "64", "--workers", "0", "--quiet", "--device", "cpu", "--no-pretrained")

# setting: (the first shard's model, input and flags; the second's); IMGS, TABLE, CKPT: made below
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "model": (("test_resnet", "IMGS"), ("test_convnext", "IMGS")),
    "out_indices": (("test_resnet", "IMGS", "--out-indices", "1,2"), ("test_resnet", "IMGS", "--out-indices", "2,3")),
    "layers": (("test_resnet", "IMGS", "--layers", "layer1"), ("test_resnet", "IMGS", "--layers", "layer2")),
    "tokens": (("test_vit", "IMGS", "--tokens", "seq"), ("test_vit", "IMGS", "--tokens", "map")),
    "output_stride": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--output-stride", "16")),
    "input_size": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--img-size", "96")),
    "img_size_mode": (("test_resnet", "IMGS", "--img-size", "long:64"), ("test_resnet", "IMGS", "--img-size", "short:64")),
    "max_side": (("test_resnet", "IMGS", "--img-size", "native", "--max-side", "64"), ("test_resnet", "IMGS", "--img-size", "native", "--max-side", "96")),
    "tiles": (("test_resnet", "IMGS", "--tiles", "32"), ("test_resnet", "IMGS", "--tiles", "32:16")),
    "tile_scale": (("test_resnet", "IMGS", "--tiles", "32"), ("test_resnet", "IMGS", "--tiles", "32", "--tile-scale", "0.5")),
    "interpolation": (("test_resnet", "IMGS", "--interpolation", "bilinear"), ("test_resnet", "IMGS", "--interpolation", "bicubic")),
    "weights": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--checkpoint", "CKPT")),
    "crop_mode": (("test_resnet", "IMGS", "--crop-mode", "center"), ("test_resnet", "IMGS", "--crop-mode", "squash")),
    "crop_pct": (("test_resnet", "IMGS", "--crop-pct", "0.875"), ("test_resnet", "IMGS", "--crop-pct", "1.0")),
    "precision": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--precision", "bf16")),
    "dtype": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--dtype", "float16")),
    "pool": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--pool", "avg")),
    "decode": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--fast-decode")),
    "path_column": (("test_resnet", "TABLE", "--path-column", "path"), ("test_resnet", "TABLE", "--path-column", "file")),
    "image_column": (("test_resnet", "TABLE", "--image-column", "img"), ("test_resnet", "TABLE", "--image-column", "img2")),
    "id_column": (("test_resnet", "TABLE", "--id-column", "key"), ("test_resnet", "TABLE", "--id-column", "key2")),
    "keep_columns": (("test_resnet", "TABLE", "--keep-columns", "key"), ("test_resnet", "TABLE", "--keep-columns", "key2")),
    "process": (("test_resnet", "IMGS"), ("test_resnet", "IMGS", "--process", "l2norm")),
}  # fmt: skip


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> dict[str, str]:
    """Two small images, a Parquet table of them with two path, two bytes and two id columns, weights."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("settings")
    imgs = make_images(root / "imgs", 2)
    files = sorted(str(p) for p in imgs.rglob("*.png"))
    data = [Path(f).read_bytes() for f in files]
    keys = [f"k{i}" for i in range(len(files))]
    table = {"path": files, "file": files, "img": data, "img2": data, "key": keys, "key2": keys}
    pq.write_table(pa.table(table), root / "table.parquet")
    ckpt = random_checkpoint("test_resnet")
    return {"IMGS": str(imgs), "TABLE": str(root / "table.parquet"), "CKPT": str(ckpt)}


def _extract(inputs: dict[str, str], args: tuple[str, ...], out: Path, *extra: str) -> Any:
    model, source, *flags = (inputs.get(a, a) for a in args)
    fast = FAST[2:] if "--tiles" in flags else FAST  # a tile sets the input size itself
    return _cli("extract", model, source, "-o", str(out), *fast, *flags, *extra)


def _shard(out: Path, i: int, n: int = 2) -> Path:
    return out.with_name(f"{out.stem}.shard-{i:05d}-of-{n:05d}{out.suffix}")


@pytest.mark.parametrize("key", list(CASES))
def test_a_changed_setting_is_refused_by_resume_and_merge(key: str, inputs: dict[str, str], tmp_path: Path) -> None:
    first, second = CASES[key]
    out = tmp_path / "feats.h5"
    for i, args in enumerate((first, second)):
        r = _extract(inputs, args, out, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output

    r = _extract(inputs, second, out, "--shard", "0/2", "--resume")
    assert r.exit_code == 2, r.output
    assert f"was made with {key}=" in r.output and f"this run has {key}=" in r.output, r.output

    merged = tmp_path / "all.h5"
    r = _cli("merge", str(_shard(out, 0)), str(_shard(out, 1)), "-o", str(merged))
    assert r.exit_code == 2, r.output
    # a table column picks the rows themselves: the shards are then cut from two input lists
    said = "was made from another input list" if key.endswith("_column") else f"was made with {key}="
    assert said in r.output, r.output
    assert not merged.exists()


def test_shards_that_agree_merge_into_one_run(inputs: dict[str, str], tmp_path: Path) -> None:
    """The codec and batch size are not settings: shards that differ only in them merge, virtually and
    with --copy, into the rows one run over every image writes; `--resume` takes them too."""
    args = ("test_resnet", "IMGS", "--out-indices", "2,4")
    single, out = tmp_path / "single.h5", tmp_path / "feats.h5"
    assert _extract(inputs, args, single, "--shard", "0/1").exit_code == 0
    assert _extract(inputs, args, out, "--shard", "0/2", "--compression", "gzip", "--batch-size", "1").exit_code == 0
    assert _extract(inputs, args, out, "--shard", "1/2").exit_code == 0
    r = _extract(inputs, args, out, "--shard", "0/2", "--resume")  # without gzip: nothing left to do
    assert r.exit_code == 0, r.output

    shards = [_shard(out, 0), _shard(out, 1)]
    for how, extra in (("virtual", ()), ("copy", ("--copy",))):
        merged = tmp_path / f"{how}.h5"
        r = _cli("merge", *map(str, shards), "-o", str(merged), *extra)
        assert r.exit_code == 0, r.output
        assert_same_as_single(merged, single)
        assert_rows_of_shards(merged, shards)


def test_a_checkpoint_is_known_by_its_bytes_not_its_path(inputs: dict[str, str], tmp_path: Path) -> None:
    """The same weights at two paths (two nodes' mounts, a moved file): shards merge, --resume goes on,
    --like and verify take the file's checkpoint from --checkpoint; other weights stay refused."""
    import shutil

    here, there = tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors"
    for p in (here, there):
        p.parent.mkdir()
        shutil.copy(inputs["CKPT"], p)
    out = tmp_path / "feats.h5"
    for i, ckpt in enumerate((here, there)):
        r = _extract(inputs, ("test_resnet", "IMGS", "--checkpoint", str(ckpt)), out, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    r = _cli("merge", str(_shard(out, 0)), str(_shard(out, 1)), "-o", str(tmp_path / "all.h5"))
    assert r.exit_code == 0, r.output
    r = _extract(inputs, ("test_resnet", "IMGS", "--checkpoint", str(there)), out, "--shard", "0/2", "--resume")
    assert r.exit_code == 0, r.output

    here.unlink()  # the file's own checkpoint is gone: only the same bytes elsewhere stand in for it
    r = _cli("verify", str(_shard(out, 0)), "-n", "1", "--device", "cpu")
    assert r.exit_code == 2 and "is gone; put it back (or give --checkpoint" in r.output, r.output
    r = _cli("verify", str(_shard(out, 0)), "-n", "1", "--device", "cpu", "--checkpoint", str(there))
    assert r.exit_code == 0, r.output
    r = _cli("extract", "test_resnet", inputs["IMGS"], "-o", str(tmp_path / "like.h5"), "--like", str(_shard(out, 0)),
             "--checkpoint", str(there), "--device", "cpu", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    other = tmp_path / "other.safetensors"
    shutil.copy(inputs["CKPT"], other)
    with other.open("r+b") as fh:  # one byte of a tensor changed: other weights
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    r = _cli("verify", str(_shard(out, 0)), "-n", "1", "--device", "cpu", "--checkpoint", str(other))
    assert r.exit_code == 2 and "is not the one the file was made with" in r.output, r.output


def test_an_edited_scalar_level_is_a_differing_setting(inputs: dict[str, str], tmp_path: Path) -> None:
    """A file whose out_indices attribute was edited into a scalar (featdump writes a list): --resume
    and merge name the setting (exit 2); comparing the levels in any order must not fail on it."""
    import h5py

    args = ("test_resnet", "IMGS", "--out-indices", "1,2")
    out = tmp_path / "feats.h5"
    for i in range(2):
        assert _extract(inputs, args, out, "--shard", f"{i}/2").exit_code == 0
    with h5py.File(_shard(out, 1), "r+") as f:
        f.attrs["out_indices"] = 2
    r = _extract(inputs, args, out, "--shard", "1/2", "--resume")
    assert r.exit_code == 2 and "was made with out_indices=2, this run has out_indices=[1, 2]" in r.output, r.output
    r = _cli("merge", str(_shard(out, 0)), str(_shard(out, 1)), "-o", str(tmp_path / "all.h5"))
    assert r.exit_code == 2 and "was made with out_indices=2, " in r.output, r.output


def test_verify_refuses_a_checkpoint_the_file_was_not_made_with(inputs: dict[str, str], tmp_path: Path) -> None:
    """--checkpoint stands for the file's own checkpoint moved: on a file made without one, verify would
    re-extract with the recorded (random) weights and say OK, the given file never read."""
    out = tmp_path / "random.h5"
    assert _extract(inputs, ("test_resnet", "IMGS"), out).exit_code == 0
    r = _cli("verify", str(out), "-n", "1", "--device", "cpu", "--checkpoint", inputs["CKPT"])
    assert r.exit_code == 2 and f"it was made without a checkpoint (random); --checkpoint {inputs['CKPT']}" in r.output, r.output


def test_a_mistyped_checkpoint_is_named_as_given(inputs: dict[str, str], tmp_path: Path) -> None:
    """A --checkpoint path that holds no file is the flag's fault, not 'the checkpoint it was made with
    is gone' (the file's own checkpoint is where it was)."""
    out = tmp_path / "ckpt.h5"
    assert _extract(inputs, ("test_resnet", "IMGS", "--checkpoint", "CKPT"), out).exit_code == 0
    typo = tmp_path / "typo.safetensors"
    r = _cli("verify", str(out), "-n", "1", "--device", "cpu", "--checkpoint", str(typo))
    assert r.exit_code == 2 and f"cannot verify {out}: --checkpoint {typo} is not a file" in r.output, r.output


def test_a_scalar_process_attribute_resumes_and_merges_as_one_step(inputs: dict[str, str], tmp_path: Path) -> None:
    """A crafted scalar ``process`` (runs write a list) is one step for --resume and merge too, as for
    --like and verify: not process="l2norm" against process=["l2norm"]."""
    import h5py

    args = ("test_resnet", "IMGS", "--process", "l2norm")
    out = tmp_path / "feats.h5"
    for i in range(2):
        assert _extract(inputs, args, out, "--shard", f"{i}/2").exit_code == 0
    with h5py.File(_shard(out, 0), "r+") as f:
        f.attrs["process"] = "l2norm"
    r = _extract(inputs, args, out, "--shard", "0/2", "--resume")
    assert r.exit_code == 0, r.output
    r = _cli("merge", str(_shard(out, 0)), str(_shard(out, 1)), "-o", str(tmp_path / "all.h5"))
    assert r.exit_code == 0, r.output
    with h5py.File(_shard(out, 0), "r+") as f:
        f.attrs["process"] = 5  # no run writes that: another setting, said as such
    r = _extract(inputs, args, out, "--shard", "0/2", "--resume")
    assert r.exit_code == 2 and 'was made with process=5, this run has process=["l2norm"]' in r.output, r.output
