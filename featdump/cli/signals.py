"""The CLI's signal manners: a Ctrl-C during start-up is remembered (not lost in third-party code),
the first one stops the run after the current batch, a second one leaves the process at once.

Leaving at once is as safe as SIGKILL: the file on disk always holds its last commit. This is the
only place besides the error handler that ends the process (``os._exit``): the library only
reports stop requests (featdump/run/signals.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

from featdump.errors import Interrupted
from featdump.run.signals import SIGNALS, SignalWatch, StopToken


def leave_at_once(token: StopToken) -> Callable[[int], None]:
    """``on_repeat`` for the CLI: one line on stderr, exit 128+signal now."""

    def leave(signum: int) -> None:
        hint = token.hint or "resume with --resume"
        line = f"featdump: error: stopped at once by a second {signal.Signals(signum).name}; {hint}\n"
        try:
            os.write(2, line.encode("utf-8", "replace"))
        finally:
            os._exit(128 + signum)

    return leave


def watch_start_up() -> SignalWatch:
    """Before the CLI's imports: signals become stop requests (a remembered Ctrl-C, not a
    KeyboardInterrupt that third-party start-up code might swallow). ``extract`` hands the watch to
    :func:`guarded_run`; every other command gives the handlers back (typer_app.py)."""
    token = StopToken()
    return SignalWatch(token, leave_at_once(token)).__enter__()


@contextlib.contextmanager
def guarded_run(start: SignalWatch | None = None) -> Iterator[StopToken]:
    """From the start of a command to its end: signals become stop requests on the yielded token
    (hand it to ``run_extraction`` with ``on_repeat=leave_at_once(token)``). After a stop the process
    only reports and tears down, so a further signal leaves at once instead of raising
    KeyboardInterrupt somewhere in interpreter shutdown."""
    watch = start or watch_start_up()  # entered already: entering again would take its own handler for the old one
    token = watch.token
    try:
        yield token
    except Interrupted:
        token.request(signal.SIGINT)  # in case the stop came from elsewhere
        raise
    finally:
        watch.restore()
        if token.stopped:
            for sig in SIGNALS:
                with contextlib.suppress(ValueError):  # not the main thread
                    signal.signal(sig, lambda signum, frame: leave_at_once(token)(signum))
