"""What a modern CLI is expected to do: examples in --help, completion, NO_COLOR, --quiet, clean --json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from featdump.cli.commands import app

from conftest import run

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


@pytest.mark.parametrize("columns", [80, 120])
@pytest.mark.parametrize("command", _commands())
def test_help_prose_is_not_broken_mid_sentence(command: str, columns: int) -> None:
    """The description above the option boxes wraps at the terminal's width, not at the source's."""
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": str(columns)}, terminal_width=columns)
    prose = res.stdout.split("╭─")[0].splitlines()[2:]  # below the usage line
    for line, after in zip(prose, [*prose[1:], ""], strict=True):
        if line.strip() and after.strip() and not after.strip().startswith("Example:"):
            next_word = after.split()[0]
            assert len(line.rstrip()) + 1 + len(next_word) > columns - 2, f"{command}: line broken early: {line.strip()!r}"


@pytest.mark.parametrize("command", _commands())
def test_no_option_says_its_default_twice(command: str) -> None:
    """An option whose help names its default (``[default: 256 MiB]``) shows no second one from Typer."""
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    twice = [line.split()[1] for line in res.stdout.splitlines() if line.count("[default:") > 1]
    assert not twice, f"{command}: {twice}"


def test_completion_is_offered(cli) -> None:
    res = cli("--help")
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout
    assert "Example: featdump" in " ".join(res.stdout.replace("│", " ").split())


@pytest.mark.slow
def test_no_color_is_respected() -> None:
    forced = run("models", "resnet18", env={"FORCE_COLOR": "1", "COLUMNS": "120"})
    assert forced.returncode == 0 and COLOR.search(forced.stdout), "FORCE_COLOR alone should colour (test is live)"
    plain = run("models", "resnet18", env={"FORCE_COLOR": "1", "NO_COLOR": "1", "COLUMNS": "120"})
    assert plain.returncode == 0 and "resnet18" in plain.stdout and not COLOR.search(plain.stdout)
    helped = run("extract", "--help", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "out-indices" in re.sub(r"\x1b\[[0-9;]*m", "", helped.stdout) and not COLOR.search(helped.stdout)


def test_quiet_prints_nothing(cli, photos: Path, tmp_path: Path) -> None:
    import warnings

    out = tmp_path / "q.h5"
    before = warnings.showwarning, list(warnings.filters)
    res = cli("extract", "resnet18", str(photos / "coins.jpg"), "-o", str(out), "--no-pretrained",
              "--img-size", "64", "--out-indices", "-1", "--quiet")  # fmt: skip
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    assert (warnings.showwarning, warnings.filters) == before  # an in-process run leaves the warnings as they were
    res = cli("show", str(out), "--quiet")
    assert res.exit_code == 0 and res.stdout == ""
    res = cli("viz", str(out), "-o", str(tmp_path / "q.png"), "--quiet")
    assert res.exit_code == 0 and res.stdout == "" and (tmp_path / "q.png").stat().st_size > 0


@pytest.mark.slow
def test_inspect_json_is_the_only_thing_on_stdout() -> None:
    proc = run(
        "inspect", "vit_tiny_patch16_224", "--layers", "blocks.0,blocks.11", "--tokens", "map", "--json", check=True
    )
    data = json.loads(proc.stdout)
    assert [l["shape"] for l in data["layers"]] == [[192, 14, 14], [192, 14, 14]]
    proc = run("inspect", "resnet18", "--all-modules", "--json", check=True)
    assert json.loads(proc.stdout)["modules"][0]["name"] == "conv1"


@pytest.mark.slow  # a real featdump process (a few seconds)
def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    """``featdump inspect resnet18 --json | head -1``: stdout's reader is gone; the command stops with
    no error line (it printed 'BrokenPipeError ... rerun with --debug'), exit 1 as for a table."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "featdump", "inspect", "resnet18", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before featdump has written anything: its first write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == b"", err
