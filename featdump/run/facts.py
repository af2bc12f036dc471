"""How a run executed (batch size, device), recorded in the file so that ``--resume`` can say when
the continued rows will match the earlier ones only to float rounding."""

from __future__ import annotations

from typing import Any


def previous_facts(attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    """``batch_size``/``device`` of the file ``--resume`` will continue (its attributes:
    :func:`~featdump.store.output.resume_attrs`), or None when there is none, it does not record them or
    it has no inputs done (those done may all have failed: no rows, but the batches are cut)."""
    if not attrs or "batch_size" not in attrs or attrs.get("complete") or not int(attrs.get("inputs_done", 0) or 0):
        return None
    return {"batch_size": attrs.get("batch_size"), "device": attrs.get("device")}


def rounding_note(previous: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """The warning for a resume whose batch size or device differs from the file's first run."""
    changed = [
        f"--{k.replace('_', '-')} {previous[k]} then, {now[k]} now"
        for k in ("batch_size", "device")
        if previous and str(previous[k]) != str(now[k])
    ]
    if not changed:
        return None
    return (
        f"--resume with another {' and '.join(c.split(' ')[0] for c in changed)} ({'; '.join(changed)}): the new rows "
        "match what an uninterrupted run would have written to float rounding, not bit for bit"
    )
