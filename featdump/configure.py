"""Options in, a checked :class:`~featdump.options.ExtractConfig` out: TOML presets, the one
precedence rule (defaults < TOML < ``--like`` file < flags) and the check of every value."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from featdump.errors import UsageError
from featdump.options import ExtractConfig
from featdump.optiontable import Option, options_of, without_none
from featdump.values import check_choice, check_positive, size_mode_text, unpinned


def load_toml(path: str | Path, cls: type = ExtractConfig) -> dict[str, Any]:
    """Read a job preset; keys are option names (``out_indices`` or ``out-indices``)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {p} is not valid TOML: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise UsageError(f"config file {p} is not valid TOML: tables or arrays nested too deeply") from None
    except IsADirectoryError:
        raise UsageError(f"config file {p} is a folder, not a TOML file") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    keys = {o.name for o in options_of(cls)}  # every option, model and inputs included
    unknown = [key for key in data if key.replace("-", "_") not in keys]
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in config file {p}; known keys: {', '.join(sorted(keys))}")
    return {key.replace("-", "_"): value for key, value in data.items()}


def _check(option: Option, value: Any) -> Any:
    """One given value -> the field's value, or a UsageError in the words of today's messages."""
    if option.parse is not None:
        return option.parse(value)
    tp, _ = without_none(option.type)
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        if isinstance(choices[0], int):
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = -1
            return check_choice(option.name, value, choices)
        return check_choice(option.name, str(value).lower(), choices)
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{option.name} must be true or false, not {value!r}")
        return value
    if tp is int:
        return check_positive(option.name, value, option.minimum)
    if tp is str:
        return str(value)
    return value


def flag_of(option: Option, value: Any = None) -> str:
    """How a user writes the option: ``--crop-mode``, ``MODEL``, ``--no-pretrained``."""
    if option.argument:
        return option.name.upper()
    first = option.flags[0].split("/")
    return first[1] if value is False and len(first) > 1 else first[0]


def like_path(given: dict[str, Any], file_values: dict[str, Any] | None = None) -> str | None:
    """The ``--like`` file named by the flags or the config file, or None."""
    value = given.get("like") or (file_values or {}).get("like")
    return str(value) if value else None


def _as_typed(option: Any, value: Any) -> str:
    """An option and its value as a user types them: ``--no-pretrained``, ``--out-indices 2,4``."""
    if isinstance(value, bool):
        return flag_of(option, value)
    return f"{flag_of(option)} {','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


def resolve(given: dict[str, Any], file_values: dict[str, Any] | None = None, command: str = "", cls: type = ExtractConfig,
            like_values: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """Merge option values: dataclass defaults < config file < ``--like`` file < flags given on the command line.
    ``given`` holds only the options the user typed (and ``model``/``inputs``/``output``); a typed
    meaning flag that differs from ``like_values`` (store/like.py) is a UsageError naming it."""
    merged: dict[str, Any] = dict(file_values or {})
    given = dict(given)
    if like_values is not None:
        table = {o.name: o for o in options_of(cls)}
        for name, value in list(given.items()):
            option = table.get(name)
            if value is None or option is None or not option.meaning or name not in like_values:
                continue
            theirs = None if like_values[name] is None else _check(option, like_values[name])
            mine = _check(option, value)
            if mine == unpinned(theirs) or (option.same and option.same(mine, theirs)):
                del given[name]  # the file's value, with its sha256 pins (--process pca:K:FILE)
            else:
                execution = ", ".join(flag_of(o) for o in table.values() if not o.meaning and o.flags and o.name != "like")
                if name == "img_size" and theirs is not None:  # as typed: long:512 or 64x64
                    theirs = size_mode_text(theirs) or "x".join(map(str, theirs))
                raise UsageError(
                    f"--like {like_path(given, file_values)}: {_as_typed(option, value)} changes what the rows mean ("
                    + ("the file was made without it" if theirs is None else f"the file has {_as_typed(option, theirs)}")
                    + f"); with --like give only execution flags ({execution})"
                )
        merged.update(like_values)
    merged.update({k: v for k, v in given.items() if v is not None})

    model = merged.pop("model", None)
    if not model:
        raise UsageError("missing MODEL: name a timm model, e.g. featdump extract resnet50 images/ -o feats.h5")
    inputs = merged.pop("inputs", None) or ()
    if isinstance(inputs, str):
        inputs = (inputs,)
    if not inputs:
        raise UsageError("missing INPUT: give an image folder, a text file listing images, or image files")
    output = merged.pop("output", None)
    if not output:
        raise UsageError("missing -o/--output: where to write the HDF5 file, e.g. -o feats.h5")

    kw = check_options(merged, cls)
    asked = {**(file_values or {} if like_values is None else {}), **given}  # typed or configured, not carried by --like
    crop = " and ".join(flag_of(o) for o in options_of(cls) if o.name in ("crop_pct", "crop_mode") and asked.get(o.name) is not None)
    if crop and (kw.get("tiles") or size_mode_text(kw.get("img_size"))):
        raise UsageError(f"{crop}: a crop needs a fixed --img-size; --tiles and --img-size long:/short:/native keep the "
                         f"whole image: drop {crop}")  # fmt: skip
    if merged:
        raise UsageError(f"unknown option(s): {', '.join(sorted(merged))}")
    return cls(model=str(model), inputs=tuple(str(i) for i in inputs), output=str(output), command=command, **kw)


def check_options(values: dict[str, Any], cls: type = ExtractConfig) -> dict[str, Any]:
    """Take the table's options out of ``values``, each checked (choices, whole numbers, parsers) and
    the pairs that exclude each other refused; what is left in ``values`` is no option of ``cls``.
    ``extract`` (through :func:`resolve`) and ``inspect`` check their options here."""
    kw: dict[str, Any] = {}
    for option in options_of(cls):
        if option.name in values:
            value = values.pop(option.name)
            kw[option.name] = None if value is None and without_none(option.type)[1] else _check(option, value)
    if kw.get("out_indices") is not None and kw.get("layers") is not None:
        raise UsageError("--out-indices and --layers exclude each other; pick feature levels or module names")
    if kw.get("fast_decode") and kw.get("decode") == "gpu":
        raise UsageError("--fast-decode and --decode gpu exclude each other: fast decoding is a CPU (PIL) shortcut")
    if (tiles := kw.get("tiles")) is not None:
        if kw.get("img_size") not in (None, (tiles[0], tiles[0])):
            raise UsageError(f"--tiles {tiles[0]} sets the model's input to {tiles[0]}x{tiles[0]}; drop --img-size")
        if kw.get("fast_decode") or kw.get("decode") == "gpu":
            raise UsageError("--tiles cuts images decoded exactly by PIL; drop --fast-decode and --decode gpu")
        kw["img_size"] = (tiles[0], tiles[0])
    elif kw.get("tile_scale", 1.0) != 1.0:
        raise UsageError("--tile-scale resizes images before --tiles cuts them; give --tiles SIZE too")
    if kw.get("max_side", 2048) != 2048 and size_mode_text(kw.get("img_size")) != "native":
        raise UsageError("--max-side bounds the images of --img-size native only; drop it, or give --img-size native")
    if (kw.get("ray") is None) != (kw.get("shards") is None):
        raise UsageError("--ray and --shards go together: e.g. --ray auto --shards 8 (one process per shard: --shard I/N)")
    if kw.get("ray") is not None and kw.get("shard") is not None:
        raise UsageError("--ray runs every shard itself; drop --shard I/N (or run that one shard without --ray)")
    if size_mode_text(kw.get("img_size")) and (kw.get("process") or kw.get("fast_decode")):
        flag = "--process" if kw.get("process") else "--fast-decode"
        raise UsageError(f"{flag} needs a fixed --img-size (e.g. 224): long:/short:/native keep each image's own shape")
    if kw.get("resume") and kw.get("overwrite"):
        raise UsageError("--resume and --overwrite exclude each other: continue the file, or replace it")
    return kw
