"""merge's hidden temp file beside its output: claimed under a shared lock while a merge lives, and
removed by the next merge into the same output once nobody holds it (a merge that was killed)."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from featdump.errors import FeatdumpError, os_error


def remove_stale_temps(out_dir: Path, name: str) -> list[str]:
    """Remove the temp files (``.OUT.h5.featdump-tmp-PID``) that killed merges into ``OUT.h5`` left.

    A live merge holds a shared ``flock`` on its temp file (shared, so that HDF5 may still open it),
    so one that can be locked exclusively here is stale; one that cannot (or with no locks) is kept.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.featdump-tmp-\d+")
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(out_dir) if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(entry.path).st_ino:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            pass  # held by a live merge (or no locks here): keep it
        finally:
            os.close(fd)
    return removed


def claim_temp(out_dir: Path, name: str) -> tuple[Path, int]:
    """Create this merge's temp file and hold ``flock(LOCK_SH)`` on it until the merge ends."""
    tmp = out_dir / f".{name}.featdump-tmp-{os.getpid()}"
    for _ in range(10):
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise FeatdumpError(
                f"{tmp} is in use by another merge into {out_dir / name} (a process with this PID on another "
                "machine?); wait for it, or merge into another -o"
            ) from None
        except OSError as exc:
            raise os_error(exc, tmp, "create") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a merge cleaning up holds it for a moment: wait, then look again
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass  # no locks on this file system: a later merge keeps it (it cannot tell)
        try:
            same = os.fstat(fd).st_ino == os.stat(tmp).st_ino
        except FileNotFoundError:  # a merge cleaning up took it for stale between create and lock
            same = False
        if same:
            return tmp, fd
        os.close(fd)
    raise FeatdumpError(f"cannot create {tmp}: it keeps disappearing; is another merge into {out_dir / name} running?")
