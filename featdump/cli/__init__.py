"""The command line: the only place that prints to the terminal or decides the exit status."""

from __future__ import annotations


def main() -> None:
    """The console script and ``python -m featdump``: SIGINT/SIGTERM are watched before the CLI's own
    imports, so a Ctrl-C during start-up is remembered (exit 130, nothing written), not lost."""
    from featdump.cli.signals import watch_start_up

    start = watch_start_up()
    from featdump.cli import commands  # registers every command with the app
    from featdump.cli.typer_app import STATE

    STATE.update(own_process=True, start=start)  # the process's own command line, not an embedding caller
    commands.app()
