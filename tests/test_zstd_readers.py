"""Files written with --compression zstd read back through every reader (show, merge --copy, viz, API)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.slow
def test_zstd_shards_merge_show_and_open(cli, random_checkpoint, photos, tmp_path, monkeypatch):
    ckpt = str(random_checkpoint("resnet18"))
    common = ["--checkpoint", ckpt, "--out-indices", "2,-1", "--img-size", "64", "--compression", "zstd", "--quiet"]
    for i in (0, 1):
        argv = ["extract", "resnet18", str(photos), "-o", str(tmp_path / "f.h5"), "--shard", f"{i}/2", *common]
        monkeypatch.setattr("sys.argv", ["featdump", *argv])  # the command attr comes from argv, as in a shell
        r = cli(*argv)
        assert r.exit_code == 0, r.output
    shards = sorted(str(p) for p in tmp_path.glob("f.shard-*.h5"))
    assert len(shards) == 2
    # a fresh interpreter that never imported hdf5plugin itself: featdump must register the codec
    code = (
        "import sys, featdump\n"
        "from featdump.store.merge import merge_shards\n"
        "merge_shards(sys.argv[1:3], sys.argv[3], copy=True)\n"
        "with featdump.open(sys.argv[3]) as f:\n"
        "    a = f.numpy('layer4', [0, 7])\n"
        "print(a.shape, float(abs(a).sum()) > 0)\n"
    )
    out = tmp_path / "all.h5"
    proc = subprocess.run([sys.executable, "-c", code, *shards, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(2, 512, 2, 2) True"
    shown = cli("show", str(out))
    assert shown.exit_code == 0, shown.output
    pic = cli("viz", str(out), "-o", str(tmp_path / "v.png"))
    assert pic.exit_code == 0, pic.output
    assert "not found" not in pic.stderr  # the merged file remembers where the shards' inputs were
    single = cli("extract", "resnet18", str(photos), "-o", str(tmp_path / "one.h5"), *common)
    assert single.exit_code == 0
    import featdump

    with featdump.open(out) as merged, featdump.open(tmp_path / "one.h5") as one:
        assert list(merged.paths) == list(one.paths)
        np.testing.assert_allclose(merged.numpy("layer4"), one.numpy("layer4"), rtol=1e-5, atol=1e-6)
