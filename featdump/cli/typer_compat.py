"""Typer >= 0.16 vendors its own copy of click (``typer._click``): exceptions and enums of that copy
are other classes than ``click``'s. Every place that needs to know goes through here, and
tests/test_compat.py fails loudly if a Typer release changes it."""

from __future__ import annotations

import inspect
from typing import Any

import click
import typer


def click_exceptions() -> tuple[type[BaseException], ...]:
    """Exit/usage exceptions of click and of the copy of click that newer Typer releases vendor:
    the CLI lets these through untouched (Typer prints them and picks the exit code)."""
    found: list[type[BaseException]] = [typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Exit]
    try:
        from typer._click import exceptions as vendored
    except ImportError:  # Typer without a vendored click
        return tuple(found)
    return (*found, vendored.ClickException)


def parameter_source(ctx: Any, name: str) -> str | None:
    """Where an option's value came from, by name (``COMMANDLINE``, ``ENVIRONMENT``, ``DEFAULT``,
    ``DEFAULT_MAP``, ``PROMPT``), whichever click's ``ParameterSource`` enum the context uses."""
    source = ctx.get_parameter_source(name)
    return None if source is None else str(getattr(source, "name", source)).rsplit(".", 1)[-1]


def join_paragraph_lines(app: typer.Typer) -> None:
    """Typer's rich help keeps the line breaks inside a docstring's paragraphs, so the terminal shows
    source lines broken mid-sentence: give each command its docstring with every paragraph on one line."""
    for info in app.registered_commands:
        doc = inspect.cleandoc(info.help or getattr(info.callback, "__doc__", None) or "")
        info.help = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
