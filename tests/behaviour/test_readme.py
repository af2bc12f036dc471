"""The README's examples are run here, so they cannot drift from what featdump does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featdump.cli.commands import app

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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- the README's examples, run

README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("<!-- section:issue6 -->") : README.index("<!-- /section:issue6 -->")]


def _block(after: str, nth: int = 0) -> str:
    """The nth fenced block after a heading of the issue-6 README section."""
    start = SECTION.index(after)
    return re.compile(r"^```\w*\n(.*?)^```", re.S | re.M).findall(SECTION, start)[nth]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, photos: Path, lite0_weights: Path) -> Path:
    """What `make demo` writes: out/demo.h5 from tf_efficientnet_lite0 with real weights."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("demo")
    (root / "out").mkdir()
    (root / "docs").mkdir()
    res = CliRunner().invoke(app, ["extract", "tf_efficientnet_lite0", str(photos), "-o", str(root / "out" / "demo.h5"),
                                   "--checkpoint", str(lite0_weights), "--out-indices", "1,2,3,4", "--dtype", "float16",
                                   "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.slow
def test_readme_show(cli, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(demo)
    shown = _block("### `featdump show`")
    res = cli("show", "out/demo.h5")
    assert res.exit_code == 0, res.output
    want = _lines(shown.split("provenance")[0])[1:]  # without the "$ featdump show" line
    assert _lines(res.stdout.split("provenance")[0]) == want


def test_readme_viz(cli, demo: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.chdir(demo)
    shown = _block("### `featdump viz`")
    command, output = _lines(shown)
    args = command.split()[2:]  # after "$ featdump"
    res = cli(*args, "--root", str(photos))
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == output
    with Image.open(demo / "docs" / "viz-demo.png") as made, Image.open(ROOT / "docs" / "viz-demo.png") as committed:
        assert made.size == committed.size
        diff = np.abs(np.asarray(made, dtype=np.int16) - np.asarray(committed, dtype=np.int16))
        assert diff.mean() < 2.0, "docs/viz-demo.png is out of date: rerun the README's viz command"


def test_readme_inspect_layers(cli) -> None:
    shown = _block("### `--layers`")
    command = _lines(shown)[0]
    res = cli(*command.split()[2:])
    assert res.exit_code == 0, res.output
    assert _lines(res.stdout) == _lines(shown)[1:]


def test_readme_models(cli) -> None:
    shown = _block("### `featdump models`")
    res = cli("models", "convnext_at*")
    assert _lines(res.stdout) == _lines(shown)[1:]


def test_readme_python(demo: Path) -> None:
    import subprocess
    import sys

    code = _block("### From Python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=demo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stdout) == _lines(_block("### From Python", 1))
