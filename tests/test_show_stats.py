"""``featdump show FILE --layer NAME --row R``: one stored map's statistics; and what a plain h5py
reader needs for a zstd file, said by ``show``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featdump

from readkit import _extract, feature_files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    return feature_files(tmp_path_factory, photos)


def test_stats_of_one_map_equal_numpy(cli, files: dict[str, Path]) -> None:
    res = cli("show", str(files["merged"]), "--layer", "layer2", "--row", "-2", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    with featdump.open(files["merged"]) as ff:
        x = ff.numpy("layer2", 6).astype(np.float64)
        assert info["row"] == 6 and info["path"] == ff.paths[6]
    assert info["shape"] == [128, 8, 8] and info["layout"] == "NCHW" and info["channels"] == 128
    assert info["min"] == pytest.approx(x.min()) and info["max"] == pytest.approx(x.max())
    assert info["mean"] == pytest.approx(x.mean()) and info["zeros"] == pytest.approx((x == 0).mean())
    norms = np.sqrt((x**2).sum(axis=(1, 2)))
    assert info["channel_norms"]["median"] == pytest.approx(np.median(norms))
    assert info["channel_norms"]["argmax"] == int(norms.argmax())
    assert info["channel_norms"]["zero_channels"] == int((norms == 0).sum())
    table = cli("show", str(files["merged"]), "--layer", "layer2", "--row", "6")
    assert table.exit_code == 0
    for text in ("layer2 at row 6", "min / max", "zeros", "channel L2 norms (128)", "median"):
        assert text in table.stdout, text


def test_stats_ids_tokens_and_usage_errors(cli, files: dict[str, Path]) -> None:
    info = json.loads(cli("show", str(files["ids"]), "--layer", "layer1", "--row", "3", "--json").stdout)
    assert info["id"] == "key-003"
    tok = json.loads(cli("show", str(files["tokens"]), "--layer", "blocks.1", "--row", "0", "--json").stdout)
    assert tok["layout"] == "NTD" and tok["channels"] == 192 and tok["shape"] == [5, 192]
    part = cli("show", str(files["partial"]), "--layer", "layer1", "--row", "5")
    assert part.exit_code == 2 and "5 committed rows" in part.stderr  # row 5 is written but not committed
    alone = cli("show", str(files["finished"]), "--row", "1")
    assert alone.exit_code == 2 and "--layer and --row go together" in alone.stderr
    bad = cli("show", str(files["finished"]), "--layer", "layer7", "--row", "1")
    assert bad.exit_code == 2 and "layers: layer1, layer2" in bad.stderr


def test_show_says_what_plain_h5py_needs_for_zstd(cli, photos: Path, tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "z.h5"
    _extract("resnet18", str(photos), "--img-size", "64", "--out-indices", "2", "--compression", "zstd", "-o", str(out))
    res = cli("show", str(out))
    assert res.exit_code == 0, res.output
    assert "plain h5py needs `import hdf5plugin`" in " ".join(res.stdout.split())
    assert "hdf5plugin" in json.loads(cli("show", str(out), "--json").stdout)["plain_reader"]
    assert json.loads(cli("show", str(files["finished"]), "--json").stdout)["plain_reader"] is None
    # what the note is about: a fresh interpreter without hdf5plugin cannot read the rows, with it it can
    code = "import sys, h5py\n{}h5py.File(sys.argv[1])['features/layer2'][0]\n"
    plain = subprocess.run([sys.executable, "-c", code.format(""), str(out)], capture_output=True, text=True)
    assert plain.returncode != 0
    fixed = subprocess.run([sys.executable, "-c", code.format("import hdf5plugin\n"), str(out)], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
