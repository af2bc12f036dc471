"""The plain progress line for batch-job logs (Slurm, PBS: stderr is a file, not a terminal).

The CLI prints :func:`progress_line` every ``FEATDUMP_LOG_SECONDS``; this module only computes.
"""

from __future__ import annotations


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(done: int, total: int, started_at: int, seconds: float, bytes_per_image: int = 0) -> str:
    """``"featdump: 1200/50000 images (2.4%), 85.3 img/s, 392.1 MB/s, ETA 9m32s"``.

    Rates count this run's images (``done - started_at``, a resumed run's earlier images excluded)
    over ``seconds``; MB/s is feature bytes (uncompressed) at ``bytes_per_image`` (0: left out)."""
    new = max(0, done - started_at)
    rate = new / seconds if seconds > 0 else 0.0
    parts = [f"featdump: {done}/{total} images ({100.0 * done / total if total else 100.0:.1f}%)", f"{rate:.1f} img/s"]
    if bytes_per_image:
        parts.append(f"{rate * bytes_per_image / 1e6:.1f} MB/s")
    left = max(0, total - done)
    parts.append(f"ETA {_duration(left / rate)}" if rate > 0 else ("done" if not left else "ETA -"))
    return ", ".join(parts)
