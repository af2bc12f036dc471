"""``--tiles SIZE[:STRIDE]`` and ``--tile-scale F``: each tile equals timm on the cropped pixels,
the last row and column end at the border, small images are padded as timm's border mode pads,
/tiles and /geometry place every tile, verify and viz read tile files; the usage errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import featdump
from featdump.data.tiles import starts
from featdump.errors import UsageError
from featdump.run.verify import verify_file

from conftest import run, smooth_picture

MODEL = "resnet18"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300x200 picture (tiles shifted inward on both axes) and a 100x60 one (smaller than a tile)."""
    folder = tmp_path_factory.mktemp("tiles")
    smooth_picture(200, 300, 1).save(folder / "a_wide.png")
    smooth_picture(60, 100, 2).save(folder / "b_small.png")
    return folder


@pytest.fixture(scope="module")
def ckpt(random_checkpoint: Any) -> Path:
    return random_checkpoint(MODEL)


def _timm(ckpt: Path) -> tuple[Any, Any]:
    """timm's features_only resnet18 with the checkpoint, and its eval normalisation."""
    import timm
    from timm.data import resolve_data_config

    model = timm.create_model(MODEL, features_only=True, out_indices=(2, 4), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(ckpt))).eval()  # fmt: skip
    cfg = resolve_data_config({}, model=model)
    mean, std = (torch.tensor(cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    return model, lambda img: (torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255 - mean) / std


def _extract(pictures: Path, out: Path, ckpt: Path, **kw: Any) -> dict[str, Any]:
    featdump.extract(MODEL, pictures, out, checkpoint=ckpt, out_indices=(2, 4), device="cpu", batch_size=4, quiet=True, **kw)
    with featdump.open(out) as f:
        return {"paths": f.paths, "tiles": f.tiles(), "geometry": f.geometry(), "meta": f.meta,
                **{name: f.numpy(name) for name in f.layers}}  # fmt: skip


def test_tile_starts_end_at_the_border() -> None:
    assert starts(1000, 512, 512) == [0, 488]
    assert starts(512, 512, 512) == [0]
    assert starts(1100, 512, 256) == [0, 256, 512, 588]
    assert starts(1024, 512, 256) == [0, 256, 512]


def test_tiles_equal_timm_on_the_cropped_pixels(pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    got = _extract(pictures, tmp_path / "t.h5", ckpt, tiles="128:96")
    wide = [(y, x) for y in (0, 72) for x in (0, 96, 172)]  # 200 = 72 + 128, 300 = 172 + 128: shifted inward
    assert got["paths"] == ["a_wide.png"] * 6 + ["b_small.png"]
    assert got["tiles"].dtype == np.int64
    assert got["tiles"].tolist() == [[y, x, y + 128, x + 128] for y, x in wide] + [[0, 0, 60, 100]]
    assert list(got["meta"]["tiles"]) == [128, 96] and float(got["meta"]["tile_scale"]) == 1.0
    assert list(got["meta"]["input_size"]) == [3, 128, 128]
    pad_top, pad_left = (128 - 60) // 2, (128 - 100) // 2
    expected_geometry = [[200, 300, 1, 1, y, x] for y, x in wide] + [[60, 100, 1, 1, -pad_top, -pad_left]]
    np.testing.assert_array_equal(got["geometry"], expected_geometry)

    model, normalise = _timm(ckpt)
    wide_img = Image.open(pictures / "a_wide.png").convert("RGB")
    crops = [wide_img.crop((x, y, x + 128, y + 128)) for y, x in wide]
    # the small picture padded by hand with the mean colour, as timm's border mode pads
    mean = model.pretrained_cfg["mean"]
    padded = np.empty((128, 128, 3), np.uint8)
    padded[:] = [round(255 * v) for v in mean]
    padded[pad_top : pad_top + 60, pad_left : pad_left + 100] = np.asarray(Image.open(pictures / "b_small.png").convert("RGB"))
    with torch.inference_mode():
        want = model(torch.stack([normalise(c) for c in [*crops, padded]]))
    for name, ref in zip(("layer2", "layer4"), want, strict=True):
        np.testing.assert_allclose(got[name], ref.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_padding_is_timms_border_mode(pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    """A picture whose long side is the tile: timm's own border transform (no resize then) gives the tile."""
    from timm.data import create_transform, resolve_data_config

    folder = tmp_path / "one"
    folder.mkdir()
    smooth_picture(60, 128, 3).save(folder / "strip.png")
    got = _extract(folder, tmp_path / "t.h5", ckpt, tiles=128)
    model, _ = _timm(ckpt)
    cfg = resolve_data_config({"input_size": (3, 128, 128), "crop_mode": "border", "crop_pct": 1.0}, model=model)
    x = create_transform(**cfg, is_training=False)(Image.open(folder / "strip.png").convert("RGB"))
    with torch.inference_mode():
        want = model(x[None])
    np.testing.assert_allclose(got["layer4"], want[1].numpy(), rtol=1e-4, atol=1e-4)
    assert got["geometry"].tolist() == [[60, 128, 1, 1, -34, 0]]


def test_tile_scale_resizes_first(pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    got = _extract(pictures, tmp_path / "t.h5", ckpt, tiles=64, tile_scale=0.5)
    model, normalise = _timm(ckpt)
    resample = Image.Resampling[model.pretrained_cfg["interpolation"].upper()]  # the model's interpolation
    wide = Image.open(pictures / "a_wide.png").convert("RGB").resize((150, 100), resample)
    corners = [(y, x) for y in (0, 36) for x in (0, 64, 86)]
    n = len(corners)
    assert got["paths"][:n] == ["a_wide.png"] * n
    assert got["tiles"][:n].tolist() == [[2 * y, 2 * x, 2 * y + 128, 2 * x + 128] for y, x in corners]
    np.testing.assert_array_equal(got["geometry"][:n, 2:], [[2, 2, 2 * y, 2 * x] for y, x in corners])
    with torch.inference_mode():
        want = model(torch.stack([normalise(wide.crop((x, y, x + 64, y + 64))) for y, x in corners]))
    np.testing.assert_allclose(got["layer4"][:n], want[1].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_verify_like_and_viz_read_a_tile_file(pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    made = tmp_path / "t.h5"
    _extract(pictures, made, ckpt, tiles="128:96", dtype="float16")
    report = verify_file(made, n=4, device="cpu")
    assert report.ok and len(report.rows) == 4, report
    again = tmp_path / "again.h5"
    featdump.extract(MODEL, pictures, again, like=made, quiet=True, batch_size=3)
    with h5py.File(made, "r") as a, h5py.File(again, "r") as b:
        np.testing.assert_array_equal(a["tiles"][:], b["tiles"][:])
        np.testing.assert_array_equal(a["features/layer4"][:], b["features/layer4"][:])
    res = run("viz", str(made), "-o", str(tmp_path / "v.png"), "--image", "4", "--image", "6", "--root", str(pictures))
    assert res.returncode == 0, res.stderr
    # the input drawn for row 4 is its tile (rows 0-5: the wide picture's six tiles; (72, 96) is the fifth)
    from featdump.viz import LABEL_H, PAD, TILE

    drawn = np.asarray(Image.open(tmp_path / "v.png").convert("RGB"))[PAD + LABEL_H : PAD + LABEL_H + TILE, PAD : PAD + TILE]
    tile = Image.open(pictures / "a_wide.png").convert("RGB").crop((96, 72, 224, 200))
    np.testing.assert_array_equal(drawn, np.asarray(tile.resize((TILE, TILE), Image.Resampling.BICUBIC)))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"tiles": "512x384"}, "--tiles takes SIZE or SIZE:STRIDE"),
        ({"tiles": "4"}, "out of range"),
        ({"tiles": 128, "img_size": 96}, "--tiles 128 sets the model's input to 128x128; drop --img-size"),
        ({"tiles": 128, "img_size": "long:128"}, "drop --img-size"),
        ({"tile_scale": 0.5}, "give --tiles SIZE too"),
        ({"tiles": 128, "tile_scale": "0"}, "--tile-scale takes a number in (0, 16]"),
        ({"tiles": 128, "fast_decode": True}, "drop --fast-decode"),
    ],
)
def test_tile_options_are_refused_in_one_line(kw: dict[str, Any], message: str, pictures: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        featdump.extract(MODEL, pictures, tmp_path / "x.h5", pretrained=False, quiet=True, **kw)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_sigkill_mid_image_then_resume_gives_the_rows_of_one_run(tmp_path: Path, ckpt: Path) -> None:
    """Commits fall only where an image's last tile is in: a run killed inside an image's tiles and
    resumed holds exactly the rows, /tiles and /geometry of an uninterrupted run."""
    from faultkit import assert_same_rows, committed_rows, extract_argv, journal_seq, kill, popen, read_rows, wait_for

    folder = tmp_path / "big"
    folder.mkdir()
    for k in range(4):
        smooth_picture(704, 960, k).save(folder / f"{k}.png")  # 15 x 11 = 165 tiles of 64 each
    (folder / "2b.png").write_bytes(b"not a png")
    clean, out = tmp_path / "clean.h5", tmp_path / "out.h5"
    argv = extract_argv(folder, clean, ckpt, "--tiles", "64")
    assert run(*argv, check=True, env={"FEATDUMP_COMMIT_SECONDS": "0"}).returncode == 0
    proc = popen(extract_argv(folder, out, ckpt, "--tiles", "64"))
    assert wait_for(lambda: journal_seq(out) >= 2, proc), proc.communicate()[1]
    kill(proc)
    proc.communicate(timeout=60)
    part = committed_rows(out)
    assert part["num_images"] == 165 * part["inputs_done"] - 165 * (part["inputs_done"] > 3), part["num_images"]
    assert part["num_images"] < 4 * 165, "the run ended before the kill: nothing was resumed"
    res = run(*extract_argv(folder, out, ckpt, "--tiles", "64", "--resume"))
    assert res.returncode == 0, res.stderr
    assert_same_rows(read_rows(out), read_rows(clean))
    with h5py.File(out, "r") as a, h5py.File(clean, "r") as b:
        for key in ("tiles", "geometry"):
            np.testing.assert_array_equal(a[key][:], b[key][:])


def test_torch_items_carry_their_tile(pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    one = _extract(pictures, tmp_path / "one.h5", ckpt, tiles="128:96")
    with featdump.open(tmp_path / "one.h5") as f:
        ds = f.torch("layer4")
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds), num_workers=1)))
    np.testing.assert_array_equal(batch["tile"].numpy(), one["tiles"])
    np.testing.assert_array_equal(batch["layer4"].numpy(), one["layer4"])


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_shards_merged_equal_one_run(copy: bool, pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    from featdump.store.merge import merge_shards

    one = _extract(pictures, tmp_path / "one.h5", ckpt, tiles="128:96")
    for i in range(2):  # the wide picture in shard 0, the small one in shard 1
        featdump.extract(MODEL, pictures, tmp_path / "s{shard}.h5", checkpoint=ckpt, out_indices=(2, 4), device="cpu",
                         quiet=True, tiles="128:96", shard=(i, 2))  # fmt: skip
    merge_shards([tmp_path / "s0.h5", tmp_path / "s1.h5"], tmp_path / "m.h5", copy=copy)
    with featdump.open(tmp_path / "m.h5") as f:
        assert f.paths == one["paths"]
        np.testing.assert_array_equal(f.tiles(), one["tiles"])
        np.testing.assert_array_equal(f.geometry(), one["geometry"])
        np.testing.assert_array_equal(f.numpy("layer4"), one["layer4"])


@pytest.mark.slow
def test_the_tiles_bench_reports_a_peak() -> None:
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "bench.tiles", "--side", "700", "--tiles", "256", "--", "--pool", "avg"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--tiles 256 --pool avg on a 700 x 700 PNG: peak RSS" in proc.stdout


def test_verify_finds_the_tiles_of_a_tar_sample(pictures: Path, ckpt: Path, tmp_path: Path) -> None:
    """Rows of a tar shard's sample are its tiles: each is re-cut from that one sample."""
    import tarfile

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for p in sorted(pictures.iterdir()):
            tar.add(p, arcname=p.name)
    made = tmp_path / "t.h5"
    got = _extract(tmp_path / "s.tar", made, ckpt, tiles="128:96")
    assert [Path(p).name for p in got["paths"]] == ["a_wide.png"] * 6 + ["b_small.png"]
    report = verify_file(made, n=7, device="cpu")
    assert report.ok and report.rows == list(range(7)), report
