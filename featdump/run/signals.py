"""Stop requests: SIGINT/SIGTERM ask a run to stop after the current batch (a :class:`StopToken`
holds the request, a :class:`SignalWatch` makes it). A repeated signal raises ``KeyboardInterrupt``
by default (a notebook survives; the file keeps its last commit); the CLI's ``on_repeat`` exits at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from featdump.data.remote import STOPPING

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopToken:
    """The first stop request wins; later ones are repeats."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hint = ""  # what a hurried stop leaves behind, for whoever reports it (set by the job)
        STOPPING.clear()

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = int(signum)
            STOPPING.set()  # image URLs being fetched give up: the batch waiting for them ends at once

    @property
    def stopped(self) -> bool:
        return self.signum is not None


def raise_keyboard_interrupt(signum: int) -> None:
    """The library's answer to a repeated signal: stop waiting, raise in the caller."""
    raise KeyboardInterrupt


class SignalWatch:
    """While entered (in the main thread): SIGINT/SIGTERM request a stop on ``token``; once a stop is
    requested, a further signal calls ``on_repeat(signum)``. Handlers are restored on :meth:`restore`
    and on exit."""

    def __init__(self, token: StopToken, on_repeat: Callable[[int], None] = raise_keyboard_interrupt) -> None:
        self.token = token
        self.on_repeat = on_repeat
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.token.stopped:
            self.on_repeat(signum)
            return
        self.token.request(signum)

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
