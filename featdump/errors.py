"""Errors the core raises; only ``cli.py`` turns them into messages and exit codes."""

from __future__ import annotations

import errno


class FeatdumpError(Exception):
    """A runtime failure with a message a user can act on (exit status 1)."""

    exit_code = 1


class FeatdumpWarning(UserWarning):
    """Something the caller should change, though the run goes on (issued with ``warnings.warn``)."""


class UsageError(FeatdumpError):
    """Bad input from the user: unknown model, bad option, missing input (exit status 2)."""

    exit_code = 2


class Interrupted(FeatdumpError):
    """The run was stopped by SIGINT/SIGTERM after flushing what it had (exit status 130)."""

    exit_code = 130


# --------------------------------------------------------------------------- OS errors -> one line


def is_out_of_space(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, or HDF5's wrapped "No space left on device" text."""
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in str(exc)


RESUME_AFTER_SPACE = "rerun the same command with --resume (everything committed so far is kept)"


class OutOfSpace(FeatdumpError):
    """The disk is full (what to do next depends on the command: bench has no --resume)."""


def out_of_space(path: object, then: str = RESUME_AFTER_SPACE) -> FeatdumpError:
    """The one wording of "the disk is full" (docs/safety.md quotes it); ``then``: what to do after
    freeing space (extract: resume; merge, export: run it again)."""
    return OutOfSpace(f"out of disk space writing {path}; free some space, then {then}")


def os_error(
    exc: BaseException, path: object, what: str = "write", hint: str | None = None, then: str = RESUME_AFTER_SPACE
) -> FeatdumpError:
    """The one OSError -> FeatdumpError mapper: ``cannot WHAT PATH: reason[; hint]``; out of space
    always gives :func:`out_of_space`."""
    from featdump.text import first_line

    if is_out_of_space(exc):
        return out_of_space(path, then)
    reason = (exc.strerror if isinstance(exc, OSError) else None) or first_line(exc)
    if hint is None and isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "write the output to a folder you can write to"
    return FeatdumpError(f"cannot {what} {path}: {reason}" + (f"; {hint}" if hint else ""))
