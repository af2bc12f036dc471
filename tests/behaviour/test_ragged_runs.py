"""Ragged files made by real runs (``--img-size long:96``, resnet18 levels 1 and 4, images of
different aspect ratios): SIGKILL + ``--resume``, ``--shard`` + ``merge`` (virtual and ``--copy``),
``verify``, ``--like``, and ``featdump.collate``'s mask against ``/cells``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import featdump

from faultkit import journal_seq, kill, make_images, popen, run, wait_for

pytestmark = pytest.mark.slow  # real processes, killed and resumed


def _argv(ckpt: Path, imgs: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "resnet18", str(imgs), "-o", str(out), "--checkpoint", str(ckpt), "--img-size", "long:96",
            "--out-indices", "1,4", "--batch-size", "2", "--device", "cpu", "--quiet", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, random_checkpoint: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ragged")
    ckpt, imgs = random_checkpoint("resnet18"), make_images(root / "imgs", 64, seed=5)
    one = root / "one.h5"
    proc = run(_argv(ckpt, imgs, one))
    assert proc.returncode == 0, proc.stderr
    return {"ckpt": ckpt, "imgs": imgs, "one": one, "root": root}


def _same_rows(a_path: Path, b_path: Path) -> None:
    with featdump.open(a_path) as a, featdump.open(b_path) as b:
        assert a.paths == b.paths and a.complete and b.complete and b.meta["format_version"] == 2
        for name in a.layers:
            np.testing.assert_array_equal(a.cells(name), b.cells(name))
            for i in range(len(a)):
                np.testing.assert_array_equal(a.numpy(name, i), b.numpy(name, i), err_msg=f"{name} row {i}")
        np.testing.assert_array_equal(a.geometry(), b.geometry())


def test_rows_differ_in_shape_as_the_images_do(made: dict[str, Path]) -> None:
    from PIL import Image

    with featdump.open(made["one"]) as f:
        cells = f.cells("layer4")
        assert len({tuple(c[1:]) for c in cells}) > 1
        for path, (_, h, w) in zip(f.paths, cells, strict=True):
            with Image.open(made["imgs"] / path) as img:
                assert h == w or (h > w) == (img.height > img.width)  # the long side stays the long side


def test_sigkill_and_resume_give_the_rows_of_one_run(made: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed.h5"
    proc = popen(_argv(made["ckpt"], made["imgs"], out))
    assert wait_for(lambda: journal_seq(out) >= 3, proc), proc.communicate()[1]
    kill(proc)
    proc.communicate(timeout=60)
    with featdump.open(out) as f:
        assert 0 < len(f) < 64 and not f.complete  # killed mid-run
    done = run(_argv(made["ckpt"], made["imgs"], out, "--resume"))
    assert done.returncode == 0, done.stderr
    _same_rows(made["one"], out)


def test_shards_merged_equal_one_run(made: dict[str, Path]) -> None:
    root = made["root"]
    for i in (0, 1):
        proc = run(_argv(made["ckpt"], made["imgs"], root / "s.h5", "--shard", f"{i}/2"))
        assert proc.returncode == 0, proc.stderr
    shards = [str(p) for p in sorted(root.glob("s.shard-*.h5"))]
    for extra in ([], ["--copy"]):
        merged = root / f"merged{len(extra)}.h5"
        proc = run(["merge", *shards, "-o", str(merged), *extra])
        assert proc.returncode == 0, proc.stderr
        _same_rows(made["one"], merged)
    proc = run(["verify", str(root / "merged0.h5"), "-n", "4"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_and_like(made: dict[str, Path], tmp_path: Path) -> None:
    proc = run(["verify", str(made["one"]), "-n", "5"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    like = tmp_path / "like.h5"
    proc = run(["extract", "resnet18", str(made["imgs"]), "-o", str(like), "--checkpoint", str(made["ckpt"]),
                "--like", str(made["one"]), "--batch-size", "2", "--quiet"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _same_rows(made["one"], like)


def test_collate_mask_is_exactly_the_cells(made: dict[str, Path]) -> None:
    f = featdump.open(made["one"])
    cells = f.cells("layer1")
    loader = torch.utils.data.DataLoader(f.torch("layer1"), batch_size=5, collate_fn=featdump.collate, num_workers=2)
    seen = 0
    for batch in loader:
        mask, maps = batch["layer1.mask"], batch["layer1"]
        for k, row in enumerate(batch["row"].tolist()):
            _, h, w = cells[row]
            assert int(mask[k].sum()) == h * w and bool(mask[k, :h, :w].all())
            np.testing.assert_array_equal(maps[k, :, :h, :w].numpy(), f.numpy("layer1", row))
            assert not maps[k][:, ~mask[k]].any()
        seen += len(batch["row"])
    assert seen == len(f)
    f.close()


def test_viz_shows_the_whole_image_and_each_rows_grid(made: dict[str, Path], tmp_path: Path) -> None:
    """The input column is the whole image (a size mode crops nothing); each layer at its row's grid."""
    from PIL import Image

    from featdump.viz import LABEL_H, PAD, render

    with featdump.open(made["one"]) as f:
        row = next(i for i, (_, h, w) in enumerate(f.cells("layer4")) if h != w)
        w = int(f.cells("layer4")[row][2])
        _, in_h, in_w = f.meta["input_size"]
        photo = made["imgs"] / f.paths[row]
    tile, th = 64, max(8, round(64 * in_h / in_w))
    result = render(made["one"], tmp_path / "v.png", images=[str(row)], layers=["layer4"], tile=tile, root=made["imgs"])
    assert not result.missing
    with Image.open(tmp_path / "v.png") as img:
        drawn = np.asarray(img.convert("RGB"))[PAD + LABEL_H : PAD + LABEL_H + th]
    with Image.open(photo) as img:
        whole = np.asarray(img.convert("RGB").resize((tile, th), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(drawn[:, PAD : PAD + tile], whole)
    # the map, upscaled from its w cells across by nearest neighbour: w runs of colour along a line
    line = drawn[th // 2, 2 * PAD + tile : 2 * PAD + 2 * tile].astype(int)
    assert 1 + int((np.abs(np.diff(line, axis=0)).sum(axis=1) > 0).sum()) == w
