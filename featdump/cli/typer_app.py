"""The Typer app and what every command shares: the error handler (the one place that turns core
exceptions into one line and an exit code), the options a user typed, and STATE (set by the entry, cli.main).
Nothing here imports torch at module level, so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from featdump import __version__
from featdump.cli.typer_compat import click_exceptions, parameter_source
from featdump.errors import FeatdumpError, Interrupted
from featdump.text import LINE_CHARS, clip, first_line, printable

app = typer.Typer(
    name="featdump",
    help="Per-layer feature maps of timm backbones, streamed from image folders into HDF5.\n\nExample: featdump extract resnet50 photos/ -o feats.h5",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATE: dict[str, Any] = {"debug": False, "own_process": False, "start": None}
F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        typer.echo(f"featdump {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    STATE["debug"] = debug
    start = STATE["start"]
    if start is not None and start.token.stopped:
        signum = start.token.signum
        raise fail(f"stopped by {signal.Signals(signum).name} during start-up; nothing was written", 128 + signum)
    if start is not None and ctx.invoked_subcommand != "extract":  # extract keeps watching (guarded_run)
        start.restore()  # the rest need no stop requests: the handlers go back
        STATE["start"] = None


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"featdump: error: {printable(clip(message, LINE_CHARS))}", err=True)
    return typer.Exit(code)


def handle_errors(func: F) -> F:
    """Core exceptions -> one line on stderr and its exit code (docs/safety.md) (tracebacks with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click_exceptions():  # Typer prints these and picks the exit code
            raise
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:  # stdout's reader left (`show --paths | head -1`): stop without a word
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
            raise typer.Exit(1) from None  # as rich's console does for the tables (Python's documented recipe)
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            if STATE["debug"]:
                raise
            if not isinstance(exc, FeatdumpError):  # the last resort
                raise fail(f"{exc.__class__.__name__}: {first_line(exc, '')} (rerun with --debug for the traceback)", 1) from None
            if isinstance(exc, Interrupted) and STATE["own_process"]:
                # The file is committed and closed. Leave now: interpreter shutdown resets signal
                # handlers, and a second Ctrl-C landing there would kill us without a word.
                fail(str(exc), exc.exit_code)  # writes the line
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise fail(str(exc), exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def given_options(ctx: Any, names: list[str]) -> dict[str, Any]:
    """The options the user typed (not defaults), for the precedence defaults < file < flags."""
    return {name: ctx.params[name] for name in names if parameter_source(ctx, name) not in (None, "DEFAULT", "DEFAULT_MAP")}
