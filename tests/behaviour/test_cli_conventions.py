"""What a modern CLI is expected to do: examples in --help, completion, NO_COLOR, --quiet, clean --json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run
from featdump.cli.commands import app

COLOR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|9[0-7]|38;[0-9;]+)m")  # foreground colour codes


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_commands_are_all_there() -> None:
    assert {"inspect", "extract", "show", "viz", "models"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_help_has_an_example(cli, command: str) -> None:
    res = cli(command, "--help")
    assert res.exit_code == 0
    text = " ".join(res.stdout.replace("│", " ").split())
    assert re.search(rf"Example: (\S+=\S+ )?featdump {command}\b", text), (
        f"no example line in `featdump {command} --help`"
    )


def test_completion_is_offered(cli) -> None:
    res = cli("--help")
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout
    assert "Example: featdump" in " ".join(res.stdout.replace("│", " ").split())


def test_no_color_is_respected() -> None:
    forced = run("models", "resnet18", env={"FORCE_COLOR": "1", "COLUMNS": "120"})
    assert forced.returncode == 0 and COLOR.search(forced.stdout), "FORCE_COLOR alone should colour (test is live)"
    plain = run("models", "resnet18", env={"FORCE_COLOR": "1", "NO_COLOR": "1", "COLUMNS": "120"})
    assert plain.returncode == 0 and "resnet18" in plain.stdout and not COLOR.search(plain.stdout)
    helped = run("extract", "--help", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "out-indices" in re.sub(r"\x1b\[[0-9;]*m", "", helped.stdout) and not COLOR.search(helped.stdout)


def test_quiet_prints_nothing(cli, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.h5"
    res = cli("extract", "resnet18", str(photos / "coins.jpg"), "-o", str(out), "--no-pretrained",
              "--img-size", "64", "--out-indices", "-1", "--quiet")  # fmt: skip
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    res = cli("show", str(out), "--quiet")
    assert res.exit_code == 0 and res.stdout == ""
    res = cli("viz", str(out), "-o", str(tmp_path / "q.png"), "--quiet")
    assert res.exit_code == 0 and res.stdout == "" and (tmp_path / "q.png").stat().st_size > 0


def test_inspect_json_is_the_only_thing_on_stdout() -> None:
    proc = run(
        "inspect", "vit_tiny_patch16_224", "--layers", "blocks.0,blocks.11", "--tokens", "map", "--json", check=True
    )
    data = json.loads(proc.stdout)
    assert [l["shape"] for l in data["layers"]] == [[192, 14, 14], [192, 14, 14]]
    proc = run("inspect", "resnet18", "--all-modules", "--json", check=True)
    assert json.loads(proc.stdout)["modules"][0]["name"] == "conv1"


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
