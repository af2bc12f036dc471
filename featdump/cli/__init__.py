"""The command line: the only place that prints to the terminal or decides the exit status."""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """The console script and ``python -m featdump``: SIGINT/SIGTERM are watched before the CLI's own
    imports, so a Ctrl-C during start-up is remembered (exit 130, nothing written), not lost."""
    from featdump.cli.signals import watch_start_up

    start = watch_start_up()
    from featdump.cli import commands  # noqa: F401 - registers every command with the app
    from featdump.cli.typer_app import run

    run(start)


def __getattr__(name: str) -> Any:  # ``featdump.cli.app`` without importing Typer with the package
    if name == "app":
        from featdump.cli.commands import app

        return app
    raise AttributeError(f"module 'featdump.cli' has no attribute {name!r}")
