"""The ``output_stride`` attribute: ``"none"`` where no ``--output-stride`` was asked, the
stride where one was; "none" files resume, merge and serve ``--like`` without a settings error, and
a file of another stride is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from clusterkit import make_images, read
from conftest import run

pytestmark = pytest.mark.slow  # real extractions in real processes

SMALL = ("--img-size", "64", "--workers", "0", "--device", "cpu", "-q")
SETTINGS = ("--no-pretrained", "--out-indices", "1,4")
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _featdump(*args: Any) -> Any:
    return run(*map(str, args), env=OFFLINE)


def _extract(images: Path, out: Path, *extra: str) -> Any:
    return _featdump("extract", "resnet18", images, "-o", out, *SMALL, *extra)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stride")
    images = make_images(root / "imgs", 3)
    _extract(images, root / "plain.h5", *SETTINGS).check_returncode()
    _extract(images, root / "os16.h5", *SETTINGS, "--output-stride", "16").check_returncode()
    more = root / "more"
    more.mkdir()
    shutil.copy(next(make_images(root / "other", 5).rglob("img004.png")), more / "new.png")
    return {"root": root, "images": images, "more": more, "plain": root / "plain.h5", "os16": root / "os16.h5"}


def test_records_none_or_the_stride_asked(files: dict[str, Path]) -> None:
    plain, os16 = read(files["plain"]), read(files["os16"])
    assert plain["attrs"]["output_stride"] == "none" and os16["attrs"]["output_stride"] == 16
    assert plain["layer_attrs"]["layer4"]["reduction"] == 32 and os16["layer_attrs"]["layer4"]["reduction"] == 16
    shown = json.loads(_featdump("show", files["plain"], "--json").stdout)
    assert shown["attrs"]["output_stride"] == "none"


def test_none_asked_resumes_merges_and_serves_like(files: dict[str, Path], tmp_path: Path) -> None:
    old = tmp_path / "old.h5"
    shutil.copy(files["plain"], old)
    new = tmp_path / "new.h5"
    p = _extract(files["more"], new, "--like", old)
    assert p.returncode == 0, p.stderr
    assert read(new)["attrs"]["output_stride"] == "none"
    p = _featdump("merge", old, new, "-o", tmp_path / "both.h5")
    assert p.returncode == 0, p.stderr
    assert read(tmp_path / "both.h5")["attrs"]["output_stride"] == "none"
    err = _featdump("merge", new, files["os16"], "-o", tmp_path / "x.h5").stderr
    assert "output_stride=16" in err and 'output_stride="none"' in err

    with h5py.File(old, "r+") as h5:  # left unfinished after its first row, as a killed run leaves it
        h5.attrs["complete"] = False
        h5.attrs["num_images"] = 1
        h5.attrs["inputs_done"] = 1
    before = old.read_bytes()
    p = _extract(files["images"], old, *SETTINGS, "--output-stride", "16", "--resume")
    assert p.returncode == 2 and "output_stride=" in p.stderr, p.stderr
    assert old.read_bytes() == before
    p = _extract(files["images"], old, *SETTINGS, "--resume")
    assert p.returncode == 0, p.stderr
    got, want = read(old), read(files["plain"])
    assert got["attrs"]["complete"] is True and got["paths"] == want["paths"]
    for name, rows in want["features"].items():
        np.testing.assert_allclose(got["features"][name], rows, rtol=1e-4, atol=1e-5, err_msg=name)
