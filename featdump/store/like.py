"""The meaning of an existing file's rows, as option values: ``extract --like FILE`` and ``verify``.

Driven by the option table (each ``meaning`` option's ``from_attr``), so an option added there is
carried with no edit here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featdump.configure import like_path, resolve
from featdump.errors import UsageError
from featdump.model.weights import sha256_file
from featdump.options import OPTIONS, ExtractConfig
from featdump.store.describe import open_checked
from featdump.store.format import read_attr
from featdump.text import first_line
from featdump.values import parse_weights


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a featdump file (its last commit; shards and merged files alike)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    try:
        h5 = open_checked(p)[0]
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable as a featdump file
        raise UsageError(f"{p} is not a readable featdump file ({first_line(exc)})") from None
    with h5:
        return {k: read_attr(v) for k, v in h5.attrs.items()}


def recorded_options(
    path: str | Path, attrs: dict[str, Any] | None = None, where: str = "--like", onto: str | None = None,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every meaning option, as :func:`featdump.configure.resolve` takes them, read back from the file's
    attributes. Options of a family (the table columns) are carried only ``onto`` that kind of input
    (``files``, ``tar``, ``table``). A recorded checkpoint, or ``checkpoint`` in its place (the same
    weights elsewhere), must hash to the recorded sha256."""
    attrs = read_attrs(path) if attrs is None else attrs
    where = f"{where} {path}"
    if attrs.get("format") != "featdump" or not attrs.get("model"):
        raise UsageError(f"{where} is not a featdump file")
    values = {}
    for o in OPTIONS:
        if o.from_attr and o.family in (None, onto):
            try:
                values[o.name] = o.from_attr(attrs)
            except (TypeError, ValueError, IndexError):  # an attribute edited into something no run writes
                raise UsageError(f"{where}: attribute {o.attr or o.name} {attrs.get(o.attr or o.name)!r} is not valid") from None
    sha256 = parse_weights(attrs.get("weights"))["sha256"]
    if checkpoint and not values["checkpoint"]:  # it would go unused: the rows come from the recorded weights
        raise UsageError(f"{where}: it was made without a checkpoint ({attrs.get('weights')}); --checkpoint {checkpoint} is not its weights")
    if not values["checkpoint"]:
        return values
    if checkpoint and sha256:  # taken for the recorded one only when it holds the same bytes
        values["checkpoint"] = str(checkpoint)
    if not Path(values["checkpoint"]).is_file():
        if checkpoint and sha256:
            raise UsageError(f"{where}: --checkpoint {checkpoint} is not a file (not found, or a folder, FIFO or device)")
        raise UsageError(
            f"{where}: the checkpoint it was made with, {values['checkpoint']}, is gone; put it back "
            "(or give --checkpoint with the same file elsewhere)"
        )
    if sha256 and (have := sha256_file(Path(values["checkpoint"]))) != sha256:
        how = "is not the one the file was made with" if checkpoint else "has changed since the file was made"
        raise UsageError(
            f"{where}: checkpoint {values['checkpoint']} {how} (sha256 {have[:12]}…, recorded {sha256[:12]}…); "
            "its rows cannot be reproduced with it"
        )
    return values


def resolve_with_like(given: dict[str, Any], file_values: dict[str, Any], command: str) -> ExtractConfig:
    """:func:`featdump.configure.resolve`, with the meaning options of a ``--like`` file (named by the
    flags or the config file) in place of the defaults: the one way the CLI and the API configure a run."""
    like = like_path(given, file_values)
    like_values = None
    if like:
        from featdump.data.sources import family

        onto = {family(str(raw)) for raw in given.get("inputs") or ()}
        like_values = recorded_options(like, onto=onto.pop() if len(onto) == 1 else None, checkpoint=given.get("checkpoint"))
    return resolve(given, file_values, command=command, like_values=like_values)
