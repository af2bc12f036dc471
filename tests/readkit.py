"""Small featdump files for the reading tests (``.torch()``, export, show --row), made once per session.

resnet18 levels 1-2 of the 8 sample photos (random weights, 64 px): a finished file, a partial one
(5 committed rows of 8), two shards merged into a virtual file, a copy with ``/ids`` added by hand,
and a ViT token layer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

_MADE: dict[str, Path] = {}


def _extract(*args: str) -> None:
    from typer.testing import CliRunner

    from featdump.cli.commands import app

    res = CliRunner().invoke(app, ["extract", *args, "--no-pretrained", "--quiet"])
    assert res.exit_code == 0, res.output


def feature_files(tmp_path_factory: pytest.TempPathFactory, photos: Path) -> dict[str, Path]:
    if _MADE:
        return dict(_MADE)
    root = tmp_path_factory.mktemp("reading")
    common = ["resnet18", str(photos), "--img-size", "64", "--out-indices", "1,2"]
    _extract(*common, "-o", str(root / "f.h5"))
    for i in (0, 1):
        _extract(*common, "-o", str(root / "s.h5"), "--shard", f"{i}/2")
    from featdump.store.merge import merge_shards

    merge_shards(sorted(root.glob("s.shard-*.h5")), root / "m.h5")
    shutil.copy(root / "f.h5", root / "p.h5")
    with h5py.File(root / "p.h5", "r+") as f:  # what a killed run leaves: rows past num_images are uncommitted
        f.attrs["complete"] = False
        f.attrs["num_images"] = 5
    shutil.copy(root / "f.h5", root / "ids.h5")
    with h5py.File(root / "ids.h5", "r+") as f:  # /ids as docs/file-format.md lays it out (tar/table sources)
        f.create_dataset("ids", data=[f"key-{i:03d}" for i in range(8)], dtype=h5py.string_dtype())
    _extract("vit_tiny_patch16_224", str(photos), "--img-size", "32", "--layers", "blocks.1", "-o", str(root / "v.h5"))
    _MADE.update(
        finished=root / "f.h5", partial=root / "p.h5", merged=root / "m.h5", ids=root / "ids.h5", tokens=root / "v.h5"
    )
    return dict(_MADE)
