"""How the option table (:class:`featdump.options.ExtractConfig`, fields declared with :func:`opt`) is
declared and read back as :class:`Option` rows, from which the command, the Python API, the TOML keys,
the file attributes, the resume and merge checks, ``--like`` and ``verify`` are derived.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
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
    parse: Callable[[Any], Any] | None  # given value -> field value; None: checked by type
    minimum: int  # for whole numbers
    meaning: bool  # defines what the rows hold: compared by --resume and merge, carried by --like / verify
    attr: str | None  # the file attribute it is recorded in (None: not recorded)
    to_attr: Callable[[Any], Any] | None  # config -> attribute value; None: written from the resolved model
    from_attr: Callable[[dict[str, Any]], Any] | None  # the file's attributes -> the option value
    family: str | None  # carried by --like only onto inputs of this family ("table": the column options)
    same: Callable[[Any, Any], bool] | None  # true of two unequal values that still mean the same rows; None: none
    example: Any  # a value other than the default (the table-wide --like/verify test runs each)

    @property
    def argument(self) -> bool:
        return not self.flags

    @property
    def required(self) -> bool:
        return self.default is MISSING


FROM_MODEL: Any = object()  # opt(to_attr=FROM_MODEL): the attribute holds what the model resolved


def opt(
    help: str,  # noqa: A002 - Typer's word
    *,
    default: Any = MISSING,
    flags: tuple[str, ...] | None = None,
    cli: Any = None,
    api: Any = None,
    parse: Callable[[Any], Any] | None = None,
    minimum: int = 1,
    meaning: bool = False,
    attr: str | None = None,
    to_attr: Callable[[Any], Any] | None | object = None,
    from_attr: Callable[[dict[str, Any]], Any] | None = None,
    family: str | None = None,
    same: Callable[[Any, Any], bool] | None = None,
    example: Any = None,
) -> Any:
    """Declare a field of the option table (see :class:`Option`). ``flags`` defaults to ``--name``;
    ``cli``/``api`` default to the field's type. A ``meaning`` option is recorded in the attribute
    ``attr`` [its name]: ``to_attr`` [the value as is, None as ""] writes it, or ``to_attr=FROM_MODEL``
    when the run writes the value the model resolved (``crop_pct``: the option or the model's);
    ``from_attr`` [the attribute as is, "" as None, lists as tuples] reads it back; ``same(a, b)`` [never]
    accepts unequal values, recorded (``--resume``, ``merge``) or typed with ``--like``, as the same rows. An
    execution option given ``attr`` is recorded too, but compared nowhere (given ``from_attr``, ``--like``
    and ``verify`` read it back)."""
    spec = dict(help=help, flags=flags, cli=cli, api=api, parse=parse, minimum=minimum, meaning=meaning, attr=attr,
                to_attr=to_attr, from_attr=from_attr, family=family, same=same, example=example)  # fmt: skip
    return field(default=default, metadata={"option": spec})


def _plain_attr(name: str, attrs: dict[str, Any]) -> Any:
    """The default ``from_attr``: attribute ``name`` as stored, "" (or missing) as None, lists as tuples."""
    value = attrs.get(name)
    if value is None or value == "" or value == []:
        return None
    return tuple(value) if isinstance(value, list) else value


def _as_stored(name: str, cfg: Any) -> Any:
    """The default ``to_attr``: the field's value, None as "" (HDF5 has no None)."""
    value = getattr(cfg, name)
    return "" if value is None else list(value) if isinstance(value, tuple) else value


_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field, opt))
def option_table(cls: type[_T]) -> type[_T]:
    """A frozen dataclass whose :func:`opt` fields are options (type checkers see which are required)."""
    return dataclass(frozen=True)(cls)


def without_none(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    args = get_args(tp)
    if get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return functools.reduce(operator.or_, rest), True
    return tp, False


def _cli_type(tp: Any) -> Any:
    """A type as Typer should parse it: choices as their base type, ``X | None`` as ``Optional[X]``."""
    inner, optional = without_none(tp)
    if get_origin(inner) is Literal:
        inner = type(get_args(inner)[0])
    return typing.Optional[inner] if optional else inner  # noqa: UP045 - the form every Typer release parses


@functools.cache
def options_of(cls: type) -> tuple[Option, ...]:
    """The option table: one :class:`Option` per field of ``cls`` declared with :func:`opt`, in field order."""
    hints = typing.get_type_hints(cls)
    table = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        tp = hints[f.name]
        meaning = spec["meaning"]
        attr = spec["attr"] or (f.name if meaning else None)
        to_attr = spec["to_attr"]
        if to_attr is FROM_MODEL or attr is None:
            to_attr = None
        elif to_attr is None:
            to_attr = functools.partial(_as_stored, f.name)
        table.append(
            Option(
                name=f.name,
                type=tp,
                default=f.default,
                flags=spec["flags"] if spec["flags"] is not None else ("--" + f.name.replace("_", "-"),),
                cli_type=_cli_type(spec["cli"] if spec["cli"] is not None else tp),
                api_type=spec["api"] if spec["api"] is not None else tp if f.default is MISSING else tp | None,
                attr=attr,
                to_attr=to_attr,
                from_attr=spec["from_attr"] or (functools.partial(_plain_attr, str(attr)) if meaning else None),
                **{key: spec[key] for key in ("help", "parse", "minimum", "meaning", "family", "same", "example")},
            )
        )
    return tuple(table)
