"""The examples of README.md and docs/*.md are run here, and every featdump command line they show
is checked against the command's real options, so they cannot drift from what featdump does."""

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
PAGES = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}


def _block_after(marker: str, lang: str = "", text: str = README) -> str:
    start = text.index(marker)
    m = re.compile(r"```" + lang + r"\n(.*?)```", re.S).search(text, start)
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
    code = _block_after("Reading it needs nothing but h5py", "python", PAGES["reading.md"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["astronaut.jpg", "(320,"]
    assert proc.stdout.strip().endswith("tf_efficientnet_lite0 True")


# --------------------------------------------------------------------------- the docs' examples, run


def _block(page: str, after: str, nth: int = 0) -> str:
    """The nth fenced block after a heading of docs/PAGE."""
    text = PAGES[page]
    return re.compile(r"^```\w*\n(.*?)^```", re.S | re.M).findall(text, text.index(after))[nth]


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
    shown = _block("commands.md", "## `featdump show`")
    res = cli("show", "out/demo.h5")
    assert res.exit_code == 0, res.output
    want = _lines(shown.split("provenance")[0])[1:]  # without the "$ featdump show" line
    assert _lines(res.stdout.split("provenance")[0]) == want


def test_readme_viz(cli, demo: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.chdir(demo)
    shown = _block("commands.md", "## `featdump viz`")
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
    shown = _block("options.md", "## `--layers`")
    command = _lines(shown)[0]
    res = cli(*command.split()[2:])
    assert res.exit_code == 0, res.output
    assert _lines(res.stdout) == _lines(shown)[1:]


def test_readme_models(cli) -> None:
    shown = _block("commands.md", "## `featdump models`")
    res = cli("models", "convnext_at*")
    assert _lines(res.stdout) == _lines(shown)[1:]


def test_readme_python(demo: Path) -> None:
    import subprocess
    import sys

    code = _block("reading.md", "## `featdump.open`")
    proc = subprocess.run([sys.executable, "-c", code], cwd=demo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stdout) == _lines(_block("reading.md", "## `featdump.open`", 1))


# --------------------------------------------------------------------------- every command line shown, parsed


def _shown_commands() -> list[tuple[str, list[str]]]:
    """(page, argv after "featdump") for every featdump command line in a fenced block of the docs."""
    import shlex

    found = []
    for page, text in {"README.md": README, **PAGES}.items():
        for block in re.findall(r"^```\w*\n(.*?)^```", text, re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^(\$ )?(\w+=\S* )*", "", line.strip())  # a prompt, VAR=value
                words = shlex.split(line, comments=True) if line.startswith("featdump ") else []
                if len(words) > 1 and not words[1].startswith("-"):
                    found.append((page, words[1:]))
    return found


def test_every_command_line_in_the_docs_names_real_options() -> None:
    """A renamed or removed command or option fails here, naming the page that still shows it."""
    import typer.main

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    shown = _shown_commands()
    assert len(shown) > 20, shown  # the pages do hold examples
    for page, (name, *args) in shown:
        assert name in commands, f"{page}: featdump {name} is not a command"
        known = {o for p in commands[name].params for o in (*p.opts, *p.secondary_opts)}
        for arg in args:
            flag = arg.split("=")[0]
            if flag.startswith("-") and flag != "-":
                assert flag in known, f"{page}: featdump {name} has no option {flag}"


def test_every_option_of_every_command_is_on_a_docs_page() -> None:
    """An option added without a word in docs/ fails here, naming it."""
    import typer.main

    docs = "".join(PAGES.values())
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            for flag in param.opts:
                if flag.startswith("--") and flag != "--help":
                    assert re.search(re.escape(flag) + r"(?![\w-])", docs), f"featdump {name} {flag} is on no page of docs/"


@pytest.mark.slow
def test_readme_any_resolution_snippet_prints_what_it_shows(cli, lite0_weights: Path, photos: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "out").mkdir()
    r = cli("extract", "tf_efficientnet_lite0", str(photos), "-o", str(tmp_path / "out" / "any.h5"), "--checkpoint",
            str(lite0_weights), "--img-size", "long:512", "--out-indices", "3,4", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    code = _block_after("Readers see each row at its own grid", "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = README[README.index(code) + len(code) :].removeprefix("```\n")  # the block after the snippet
    shown = re.match(r"```\n(.*?)```", after, re.S).group(1)  # type: ignore[union-attr]
    assert _lines(proc.stdout) == _lines(shown)
