"""``featdump inspect``: the size planned for --images, and module names kept whole at 80 columns."""

from __future__ import annotations

import json

import pytest

from conftest import run


@pytest.mark.slow
def test_inspect_images_json():
    p = run("inspect", "resnet18", "--images", "1000", "--dtype", "float16", "--pool", "avg", "--json", check=True)
    d = json.loads(p.stdout)
    assert d["images"] == 1000
    assert [l["total_bytes"] for l in d["layers"]] == [l["shape"][0] * 2 * 1000 for l in d["layers"]]
    assert d["total_bytes"] == sum(l["total_bytes"] for l in d["layers"])


@pytest.mark.slow
def test_module_names_do_not_wrap_at_80_columns():
    for extra in ([], ["--images", "100000"]):
        p = run("inspect", "efficientnet_b0", *extra, env={"COLUMNS": "80"}, check=True)
        assert all(len(line) <= 80 for line in p.stdout.splitlines())
        assert all(f"blocks.{i} " in p.stdout for i in (0, 1, 2, 4, 6)), p.stdout
