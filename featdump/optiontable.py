"""How the option table is declared and read.

The table itself is :class:`featdump.options.ExtractConfig`: a frozen dataclass whose fields are
declared with :func:`opt` (help, flags, resume/merge setting, file attribute). :func:`options_of`
reads such a class back as :class:`Option` rows, from which the command, the Python API, the TOML
keys, the file attributes and the resume checks are derived.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, get_args, get_origin


@dataclass(frozen=True)
class Option:
    """One row of the option table (an :class:`ExtractConfig` field with :func:`opt` metadata)."""

    name: str  # the field, the API keyword, the TOML key (dashes allowed there) and the file attribute
    type: Any  # the field's type; Literal[...] for choices
    default: Any  # dataclasses.MISSING: required
    help: str  # the --help text, also the API's documentation
    flags: tuple[str, ...]  # command-line spellings, e.g. ("-o", "--output"); () for a positional argument
    cli_type: Any  # what Typer parses (choices stay str: resolve() checks them, case-insensitively)
    api_type: Any  # what featdump.extract accepts (None there always means "not given")
    setting: bool  # resume/merge setting: the file attribute of this name must match
    attr: Callable[[Any], Any] | None  # the file attribute's value, or None: not written from the option
    parse: Callable[[Any], Any] | None  # given value -> field value; None: checked by type
    minimum: int  # for whole numbers

    @property
    def argument(self) -> bool:
        return not self.flags

    @property
    def required(self) -> bool:
        return self.default is MISSING


def opt(
    help: str,  # noqa: A002 - Typer's word
    *,
    default: Any = MISSING,
    flags: tuple[str, ...] | None = None,
    cli: Any = None,
    api: Any = None,
    setting: bool = False,
    attr: bool | Callable[[Any], Any] = False,
    parse: Callable[[Any], Any] | None = None,
    minimum: int = 1,
) -> Any:
    """Declare a field of the option table (see :class:`Option`). ``flags`` defaults to ``--name``;
    ``attr=True`` stores the value as is; ``cli``/``api`` default to the field's type."""
    spec = dict(help=help, flags=flags, cli=cli, api=api, setting=setting, attr=attr, parse=parse, minimum=minimum)
    return field(default=default, metadata={"option": spec})


_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field, opt))
def option_table(cls: type[_T]) -> type[_T]:
    """A frozen dataclass whose :func:`opt` fields are options (type checkers see which are required)."""
    return dataclass(frozen=True)(cls)


_UnionType = type(int | None)


def without_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    args = get_args(tp)
    if get_origin(tp) in (typing.Union, _UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return functools.reduce(operator.or_, rest), True
    return tp, False


def _cli_type(tp: Any) -> Any:
    """A type as Typer should parse it: choices as their base type, ``X | None`` as ``Optional[X]``."""
    inner, optional = without_none(tp)
    if get_origin(inner) is Literal:
        inner = type(get_args(inner)[0])
    return typing.Optional[inner] if optional else inner  # noqa: UP045 - the form every Typer release parses


_TABLES: dict[type, tuple[Option, ...]] = {}


def options_of(cls: type) -> tuple[Option, ...]:
    """The option table: one :class:`Option` per field of ``cls`` declared with :func:`opt`, in field order."""
    if cls not in _TABLES:
        _TABLES[cls] = _read_table(cls)
    return _TABLES[cls]


def _read_table(cls: Any) -> tuple[Option, ...]:
    hints = typing.get_type_hints(cls)
    table = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        tp = hints[f.name]
        attr = spec["attr"]
        if attr is True:
            attr = operator.attrgetter(f.name)
        flags = spec["flags"]
        if flags is None:
            flags = ("--" + f.name.replace("_", "-"),)
        api = spec["api"]
        if api is None:
            api = tp if f.default is MISSING else tp | None
        table.append(
            Option(
                name=f.name,
                type=tp,
                default=f.default,
                help=spec["help"],
                flags=flags,
                cli_type=_cli_type(spec["cli"] if spec["cli"] is not None else tp),
                api_type=api,
                setting=spec["setting"],
                attr=attr or None,
                parse=spec["parse"],
                minimum=spec["minimum"],
            )
        )
    return tuple(table)
