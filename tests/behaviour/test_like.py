"""``extract --like FILE``: the settings that define the rows are taken from a file; changing one is
refused; the new file merges with the old one."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import PHOTOS, extract_resnet18, run, stored


@pytest.mark.slow
def test_like_reproduces_refuses_and_merges(tmp_path, imgs, random_checkpoint):
    ckpt = random_checkpoint("resnet18")
    old = tmp_path / "old.h5"
    extract_resnet18(ckpt, imgs, old, "--out-indices", "1,3", "--dtype", "float16", "--pool", "max").check_returncode()
    same = tmp_path / "same.h5"
    p = run("extract", "resnet18", str(imgs), "-o", str(same), "--like", str(old), "-q", "--batch-size", "3", "--workers", "0")
    assert p.returncode == 0, p.stderr
    a, b = stored(old), stored(same)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3)
    import featdump

    with featdump.open(same) as f:
        assert (f.meta["dtype"], f.meta["pool"], f.meta["out_indices"]) == ("float16", "max", [1, 3])

    for flag in (["--dtype", "float32"], ["--pool", "avg"], ["--no-pretrained"], ["--out-indices", "2"]):
        p = run("extract", "resnet18", str(imgs), "-o", str(tmp_path / "x.h5"), "--like", str(old), *flag)
        assert p.returncode == 2 and flag[0] in p.stderr and "changes what the rows mean" in p.stderr, p.stderr
    p = run("extract", "resnet34", str(imgs), "-o", str(tmp_path / "x.h5"), "--like", str(old))
    assert p.returncode == 2 and "MODEL" in p.stderr

    # new images, extracted like the old file, merge with it
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(PHOTOS / "camera.jpg", more / "camera.jpg")
    new = tmp_path / "new.h5"
    run("extract", "resnet18", str(more), "-o", str(new), "--like", str(old), "-q", check=True)
    p = run("merge", str(old), str(new), "-o", str(tmp_path / "both.h5"), "--copy")
    assert p.returncode == 0, p.stderr
    a, b = stored(old), stored(new)
    with featdump.open(tmp_path / "both.h5") as f, featdump.open(old) as o, featdump.open(new) as n:
        assert f.num_images == 5 and f.paths == o.paths + n.paths and f.row("camera.jpg") == 4
        for name in f.layers:
            np.testing.assert_array_equal(f.numpy(name), np.concatenate([a[name], b[name]]))
