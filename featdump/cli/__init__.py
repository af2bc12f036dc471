"""The command line: the only place that prints to the terminal or decides the exit status."""

from featdump.cli.commands import app, main

__all__ = ["app", "main"]
