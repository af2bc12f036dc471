"""Attributes of the file format that more than one module writes or reads.

``inputs``: the INPUT arguments of the run, as a JSON list of strings, in the order given; local
paths made absolute (so readers such as ``viz`` find the images again from any folder), URLs and
other remote inputs as written. Files written before this attribute existed have only ``command``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from featdump.text import to_str

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def inputs_attr(inputs: Sequence[str | os.PathLike[str]]) -> str:
    """The ``inputs`` root attribute for a run over ``inputs`` (a JSON list of strings)."""
    out = []
    for item in inputs:
        text = os.fspath(item)
        out.append(text if _URL.match(text) else os.path.abspath(text))
    return json.dumps(out, ensure_ascii=False)


def read_inputs_attr(value: Any) -> list[str] | None:
    """The list written by :func:`inputs_attr`, or None when the file has none (older files) or it
    is not such a list."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = to_str(value)
    try:
        items = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        return None
    return items
