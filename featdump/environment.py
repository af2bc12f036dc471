"""featdump's environment settings, declared once: name, default, how a value is read, what to give.

Every run checks them all before it creates anything (:func:`check_environment`). docs/options.md
("Environment settings") lists the same table (tests/test_environment.py checks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from featdump.errors import UsageError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any  # the value when the variable is unset or empty
    parse: Callable[[str], Any]  # the stripped text -> the value; ValueError for a bad one
    give: str  # what to give instead of a bad value (the error's second half)
    help: str

    def value(self, env: Mapping[str, str] | None = None) -> Any:
        raw = (os.environ if env is None else env).get(self.name, "")
        if not raw.strip():
            return self.default
        try:
            return self.parse(raw.strip())
        except ValueError:
            raise UsageError(f"{self.name}={raw!r}: {self.give}") from None


def _number(low: float, high: float, kind: Callable[[str], Any] = float, *, not_: float | None = None) -> Callable[[str], Any]:
    """A number in ``[low, high]``, not ``not_`` (NaN fails the comparison, infinity the bound)."""

    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high or value == not_:
            raise ValueError(text)
        return value

    return parse


def _choice(values: Mapping[str, Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.upper() not in values:
            raise ValueError(text)
        return values[text.upper()]

    return parse


COMMIT_SECONDS = Setting(
    "FEATDUMP_COMMIT_SECONDS", 1.0, _number(0, 1e9),
    "give the seconds between commits (0: after every batch)",
    "Seconds between commits of a run (default 1; 0 commits after every batch).",
)  # fmt: skip
ZSTD_LEVEL = Setting(
    "FEATDUMP_ZSTD_LEVEL", -3, _number(-50, 22, int, not_=0),
    "give a zstd level from -50 (fastest) to 22 (smallest), not 0",
    "The level of --compression zstd (default -3, zstd's fast mode; -50..22, not 0).",
)  # fmt: skip
MALLOC_TUNING = Setting(
    "FEATDUMP_MALLOC_TUNING", True, _choice({"0": False, "1": True}),
    "give 0 (leave malloc alone) or 1",
    "0 leaves glibc's malloc settings alone (default 1: tuned for steady speed, docs/performance.md).",
)  # fmt: skip
LOG_SECONDS = Setting(
    "FEATDUMP_LOG_SECONDS", 30.0, _number(0, 1e9, not_=0),
    "give the seconds between progress lines (a number above 0)",
    "Seconds between the plain progress lines when stderr is not a terminal (default 30).",
)  # fmt: skip
WRITE_THREADS = Setting(
    "FEATDUMP_WRITE_THREADS", None, _number(1, 64, int),
    "give a number of threads from 1 to 64",
    "Threads preparing (compressing) chunks for the writer (default: the cores left over, 1-8).",
)  # fmt: skip
FILE_LOCKING = Setting(
    "HDF5_USE_FILE_LOCKING", True,
    _choice({**dict.fromkeys(("FALSE", "0", "NO", "OFF"), False), **dict.fromkeys(("TRUE", "1", "YES", "ON", "BEST_EFFORT"), True)}),
    "give TRUE or FALSE (or BEST_EFFORT)",
    "HDF5's own switch; FALSE also turns off featdump's lock on the output (two writers then corrupt it).",
)  # fmt: skip
REQUEST_SECONDS = Setting(
    "FEATDUMP_REQUEST_SECONDS", 120.0, _number(0, 1e9, not_=0),
    "give the seconds one remote request may take (a number above 0)",
    "The deadline of one HTTP(S) request, start to last byte (default 120); a slower one is retried, then a /failed record.",
)  # fmt: skip

ENVIRONMENT: tuple[Setting, ...] = (
    COMMIT_SECONDS, ZSTD_LEVEL, MALLOC_TUNING, LOG_SECONDS, WRITE_THREADS, FILE_LOCKING, REQUEST_SECONDS
)  # fmt: skip


def check_environment() -> None:
    """Every setting a run reads, checked before anything is created (UsageError for a bad value)."""
    for setting in ENVIRONMENT:
        setting.value()
