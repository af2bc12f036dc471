"""The README's examples are run here, so they cannot drift from what featdump does."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _block_after(marker: str, lang: str = "") -> str:
    start = README.index(marker)
    m = re.compile(r"```" + lang + r"\n(.*?)```", re.S).search(README, start)
    assert m, marker
    return m.group(1)


def test_inspect_example_matches_the_command(cli):
    shown = _block_after("## What it does")
    table = shown.split("$ featdump extract")[0]
    result = cli("inspect", "resnet50", "--out-indices", "1,2,3,4")
    assert result.exit_code == 0
    want = [line.strip() for line in table.splitlines()[1:] if line.strip()]
    got = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    assert got == want


def test_h5py_snippet_runs_on_a_real_output(cli, lite0_weights, photos, tmp_path):
    out = tmp_path / "out" / "demo.h5"
    out.parent.mkdir()
    r = cli(
        "extract", "tf_efficientnet_lite0", str(photos), "-o", str(out), "--checkpoint", str(lite0_weights),
        "--out-indices", "1,2,3,4", "--dtype", "float16", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    code = _block_after("Reading it needs nothing but h5py", "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["astronaut.jpg", "(320,"]
    assert proc.stdout.strip().endswith("tf_efficientnet_lite0 True")
