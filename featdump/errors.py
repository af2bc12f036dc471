"""Errors the core raises; only ``cli.py`` turns them into messages and exit codes."""

from __future__ import annotations


class FeatdumpError(Exception):
    """A runtime failure with a message a user can act on (exit status 1)."""

    exit_code = 1


class UsageError(FeatdumpError):
    """Bad input from the user: unknown model, bad option, missing input (exit status 2)."""

    exit_code = 2


class Interrupted(FeatdumpError):
    """The run was stopped by SIGINT/SIGTERM after flushing what it had (exit status 130)."""

    exit_code = 130
