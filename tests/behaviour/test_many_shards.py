"""More shards than the open-file limit: ``merge``, ``show``, ``featdump.open`` and
``export`` open a merged file's sources a few at a time, so they work under ``ulimit -n 256`` with
300 shards (HDF5 keeps a virtual dataset's sources open until it is closed, and past the limit reads
their rows as NaN without a word).

The shards are copies of one real one-image shard, each given its place ([I, 300]), its own path
and its own value (the shard's index) with h5py, so a row read from the wrong source shows.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import PHOTOS, run

N = 300
LIMIT = 256


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@pytest.mark.slow
def test_three_hundred_shards_under_a_limit_of_256_open_files(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(PHOTOS / "coins.jpg", one / "coins.jpg")
    run("extract", "resnet18", str(one), "-o", str(tmp_path / "x.h5"), "--shard", "0/1", "--no-pretrained",
        "--img-size", "32", "--out-indices", "1", "--pool", "avg", "--quiet", check=True)  # fmt: skip
    shards = []
    for i in range(N):
        shard = tmp_path / f"s.shard-{i:05d}-of-{N:05d}.h5"
        shutil.copy(tmp_path / "x.h5", shard)  # a run of one shard keeps its name
        with h5py.File(shard, "r+") as h5:
            h5.attrs["shard"] = np.array([i, N])
            h5.attrs["list_size"] = N
            h5["paths"][0] = f"img-{i:03d}.jpg"
            for ds in h5["features"].values():
                ds[0] = i
        shards.append(str(shard))
    merged, out = tmp_path / "m.h5", tmp_path / "export"
    for args in (("merge", *shards, "-o", str(merged)), ("show", str(merged)), ("export", str(merged), "-o", str(out))):
        proc = run(*args, preexec_fn=_limited)
        assert proc.returncode == 0, (args[0], proc.stderr)
    code = (
        "import sys, featdump, numpy as np\n"
        "f = featdump.open(sys.argv[1])\n"
        "x = f.numpy(f.layers[0])\n"
        "print(x[:, 0].tolist() == list(range(len(f))), len(f))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(merged)], capture_output=True, text=True, preexec_fn=_limited)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", str(N)]
    layer = next(p.name for p in out.iterdir() if p.is_dir())
    emb = np.load(out / layer / "emb" / "part-00000.npy")
    assert emb[:, 0].tolist() == list(range(N))
