"""The option table (featdump/options.py) and everything derived from it: the extract command's
parameters, featdump.extract's keywords, the TOML keys and the file attributes (what --resume and merge
refuse to change: tests/test_settings.py)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Literal, get_origin

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import featdump
from featdump import api, options
from featdump.cli import commands
from featdump.configure import load_toml, resolve
from featdump.errors import UsageError
from featdump.options import OPTIONS, ExtractConfig, option_attrs
from featdump.optiontable import opt, option_table, options_of, without_none
from featdump.store.format import setting_text, setting_value
from featdump.values import stored_stride, stride_attr

BASE = {"model": "resnet18", "inputs": ("imgs",), "output": "o.h5"}
NAMES = [o.name for o in OPTIONS]
CHOICES = {"tokens", "output_stride", "crop_mode", "interpolation", "precision", "dtype", "pool", "compression", "decode"}


def _click_params(command_table: typer.Typer) -> dict:
    group = typer.main.get_command(command_table)
    return {p.name: p for p in group.commands["extract"].params}  # type: ignore[attr-defined]


def test_every_config_field_is_an_option() -> None:
    fields = [f.name for f in dataclasses.fields(ExtractConfig)]
    assert fields == [*NAMES, "command"]
    assert all(o.help for o in OPTIONS)
    assert [o.name for o in OPTIONS if o.required] == ["model", "inputs", "output"]


def test_choices_are_literal_types() -> None:
    literal = {o.name for o in OPTIONS if get_origin(without_none(o.type)[0]) is Literal}
    assert literal == CHOICES
    assert options.POOLS == ("none", "avg", "max") and options.OUTPUT_STRIDES == (8, 16, 32)


def test_command_parameters_are_the_table() -> None:
    params = _click_params(commands.app)
    assert list(params) == [*NAMES, "config_file"]  # the same order: --help lists them as declared
    for o in OPTIONS:
        p = params[o.name]
        assert p.help == o.help, o.name
        if o.argument:
            assert p.param_type_name == "argument"
        else:
            assert set(p.opts) | set(p.secondary_opts) == {s for f in o.flags for s in f.split("/")}, o.name
            assert p.required == o.required and (o.required or p.default == o.default), o.name


def test_help_lists_every_option() -> None:
    res = CliRunner().invoke(commands.app, ["extract", "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0
    for o in OPTIONS:
        for flag in o.flags:
            assert flag.split("/")[0] in res.stdout, flag
        assert o.help.replace("\\[", "[") in res.stdout, o.name  # "\\[": rich would drop [..] as markup
    assert "--config" in res.stdout


def test_api_keywords_are_the_table() -> None:
    params = inspect.signature(featdump.extract).parameters
    assert list(params) == [*NAMES, "config", "progress"]
    for o in OPTIONS:
        p = params[o.name]
        assert p.annotation == o.api_type, o.name
        if o.required:
            assert p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
        else:
            assert p.kind is p.KEYWORD_ONLY and p.default is None


def test_api_takes_quiet_and_refuses_unknown_keywords(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        featdump.extract("resnet18", tmp_path, tmp_path / "o.h5", bogus=1)
    with pytest.raises(UsageError, match="missing INPUT"):  # quiet= and progress= pass; the options are checked
        featdump.extract("resnet18", [], tmp_path / "o.h5", quiet=True, progress=False)


def test_toml_keys_are_the_table(tmp_path: Path) -> None:
    preset = tmp_path / "all.toml"
    preset.write_text("".join(f"{name.replace('_', '-')} = 1\n" for name in NAMES))
    assert set(load_toml(preset)) == set(NAMES)
    preset.write_text("config = 1\n")
    with pytest.raises(UsageError, match=r"known keys: batch_size, checkpoint, compile, .*, workers$"):
        load_toml(preset)


def test_option_attrs() -> None:
    cfg = resolve({**BASE, "pool": "AVG", "fast_decode": True})
    attrs = option_attrs(cfg)
    assert attrs == {
        "model": "resnet18", "tokens": "seq", "output_stride": "none", "precision": "fp32", "dtype": "float32",
        "max_side": 2048, "tiles": "", "tile_scale": 1.0, "pool": "avg", "compression": "none", "decode": "fast",
        "path_column": "", "image_column": "",
        "id_column": "", "keep": "", "keep_columns": "", "process": "", "max_image_pixels": "",
    }  # fmt: skip
    assert option_attrs(resolve({**BASE, "decode": "gpu", "output_stride": "16"}))["decode"] == "gpu"
    assert option_attrs(resolve({**BASE, "output_stride": 16}))["output_stride"] == 16


def test_output_stride_attribute_reads_back_as_the_option() -> None:
    for asked in (None, 8, 16):
        assert stored_stride(stride_attr(asked)) == asked
    assert stored_stride(np.int64(16)) == 16 and setting_value(np.int64(16)) == 16
    assert setting_text("none") != setting_text(16)
    assert setting_value(b"float16") == "float16" and setting_value(None) == ""


def test_resolve_checks_by_type() -> None:
    cfg = resolve({**BASE, "precision": "FP16", "workers": 0, "checkpoint": Path("w.pth"), "output_stride": "8"})
    assert (cfg.precision, cfg.workers, cfg.checkpoint, cfg.output_stride) == ("fp16", 0, "w.pth", 8)
    for extra, message in [
        ({"workers": -1}, "--workers must be a whole number >= 0, not -1"),
        ({"max_image_pixels": 0}, "--max-image-pixels must be a whole number >= 1, not 0"),
        ({"output_stride": "x"}, "--output-stride must be one of 8|16|32, not -1"),
        ({"tokens": "all"}, "--tokens must be one of seq|map|both, not 'all'"),
        ({"precision": "fp8"}, "--precision must be one of fp32|fp16|bf16, not 'fp8'"),
        ({"compile": 1}, "compile must be true or false, not 1"),
        ({"fast_decode": True, "decode": "gpu"}, "--fast-decode and --decode gpu exclude each other"),
    ]:
        with pytest.raises(UsageError, match=message):
            resolve({**BASE, **extra})


# --------------------------------------------------------------------------- adding an option


@option_table
class WithThrowaway(ExtractConfig):
    """ExtractConfig plus one option: the one entry adding an option takes."""

    shuffle_channels: Literal["no", "yes"] = opt("Throwaway: no|yes.", default="no", meaning=True, example="yes")


def test_a_new_option_is_one_entry(tmp_path: Path) -> None:
    table = options_of(WithThrowaway)
    assert [o.name for o in table] == [*NAMES, "shuffle_channels"]

    # the command: a flag with its help, parsed, given only when typed
    app = typer.Typer()
    seen: dict = {}

    @app.command()
    @commands.with_signature(commands.extract_parameters(table))
    def extract(ctx: typer.Context, **values: object) -> None:
        seen.update(commands.given_options(ctx, [o.name for o in table]))

    runner = CliRunner()
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--shuffle-channels" in res.stdout and "Throwaway: no|yes." in res.stdout
    res = runner.invoke(app, ["m", "in", "-o", "o.h5", "--shuffle-channels", "YES"])
    assert res.exit_code == 0, res.output
    assert seen["shuffle_channels"] == "YES" and "pool" not in seen

    # the API: a keyword; TOML: a key; resolve: checked as a choice
    assert "shuffle_channels" in api.api_signature(table).parameters
    preset = tmp_path / "p.toml"
    preset.write_text('shuffle-channels = "yes"\n')
    assert load_toml(preset, WithThrowaway) == {"shuffle_channels": "yes"}
    cfg = resolve(seen, {}, cls=WithThrowaway)
    assert isinstance(cfg, WithThrowaway) and cfg.shuffle_channels == "yes"
    with pytest.raises(UsageError, match="--shuffle-channels must be one of no|yes, not 'maybe'"):
        resolve({**BASE, "shuffle_channels": "maybe"}, cls=WithThrowaway)

    # the file attribute, the resume/merge setting, and --like / verify read it back
    assert option_attrs(cfg)["shuffle_channels"] == "yes"
    assert "shuffle_channels" in options.settings(table)
    (new,) = (o for o in table if o.name == "shuffle_channels")
    assert new.from_attr({"shuffle_channels": "yes"}) == "yes"
    assert dataclasses.is_dataclass(WithThrowaway)


def test_options_and_the_api_import_neither_the_cli_nor_rich() -> None:
    import subprocess
    import sys

    code = (
        "import sys, featdump.api, featdump.options, featdump.progress\n"
        "bad = [m for m in sys.modules if m.startswith(('featdump.cli', 'rich', 'typer', 'torch'))]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_like_takes_the_files_value_typed_again_in_any_spelling() -> None:
    like = {"img_size": (64, 64), "out_indices": (1, 4), "process": ("pca:3:b.npz sha256:ab12",), "pool": "avg"}
    typed = {"img_size": "64", "out_indices": "1,4", "process": ["pca:3:b.npz"], "pool": "AVG"}
    cfg = resolve({**BASE, **typed}, like_values=like)
    assert (cfg.img_size, cfg.out_indices, cfg.process, cfg.pool) == ((64, 64), (1, 4), ("pca:3:b.npz sha256:ab12",), "avg")
    assert resolve({**BASE, "out_indices": "4,1"}, like_values=like).out_indices == (1, 4)  # levels in any order
    with pytest.raises(UsageError, match=r"--out-indices 4,2 changes what the rows mean \(the file has --out-indices 1,4\)"):
        resolve({**BASE, "out_indices": "4,2"}, like_values=like)
    with pytest.raises(UsageError, match=r"--img-size 96 changes what the rows mean \(the file has --img-size 64x64\)"):
        resolve({**BASE, "img_size": "96"}, like_values=like)
    with pytest.raises(UsageError, match=r"--img-size 96 changes what the rows mean \(the file has --img-size native\)"):
        resolve({**BASE, "img_size": "96"}, like_values={**like, "img_size": ("native", 0)})
    with pytest.raises(UsageError, match=r"--no-pretrained changes what the rows mean \(the file has --pretrained\)"):
        resolve({**BASE, "pretrained": False}, like_values={**like, "pretrained": True})
    with pytest.raises(UsageError, match=r"--tiles 128 changes what the rows mean \(the file was made without it\)"):
        resolve({**BASE, "tiles": "128"}, like_values={**like, "tiles": None})
