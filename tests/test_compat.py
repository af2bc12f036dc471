"""The wrappers around timm's and Typer's private APIs (featdump/model/timm_compat.py,
featdump/cli/typer_compat.py): if a timm or Typer release changes what they rely on, these fail."""

from __future__ import annotations

from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from featdump.cli import typer_compat
from featdump.model import timm_compat


def test_timm_public_entrypoints_cover_the_registry() -> None:
    """catalog uses the public list_models + model_entrypoint: they must still cover every model
    function (the private registry adds only deprecation shims, defined in timm.models._*, which
    catalog never follows anyway)."""
    from timm.models import _registry, list_models, model_entrypoint

    public = {model_entrypoint(n) for n in list_models()}
    private = set(_registry._model_entrypoints.values())
    assert public <= private
    assert all(fn.__module__.startswith("timm.models._") for fn in private - public)


def test_resolve_pretrained_source() -> None:
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg("resnet18", pretrained_cfg="a1_in1k").to_dict()
    kind, loc = timm_compat.resolve_pretrained_source(cfg)
    assert kind == "hf-hub" and (loc if isinstance(loc, str) else loc[0]) == "timm/resnet18.a1_in1k"
    kind, loc = timm_compat.resolve_pretrained_source({"url": "https://example.org/w.pth"})
    assert (kind, loc) == ("url", "https://example.org/w.pth")


def test_hub_helpers() -> None:
    assert timm_compat.safe_alternatives("pytorch_model.bin") == ["model.safetensors"]
    assert timm_compat.safe_alternatives("open_clip_pytorch_model.bin")[0].endswith(".safetensors")
    assert timm_compat.hf_split("org/name@v1") == ("org/name", "v1")
    assert timm_compat.hf_split("org/name") == ("org/name", None)
    assert not timm_compat.check_cached_file("https://example.invalid/featdump-never-cached.pth")


def test_download_signature() -> None:
    import inspect

    params = inspect.signature(timm_compat._private("_hub", "download_cached_file")).parameters
    assert {"url", "check_hash", "progress"} <= set(params)


def test_a_missing_private_helper_fails_loudly() -> None:
    with pytest.raises(timm_compat.TimmChanged, match="timm .* has no timm.models._hub.nope"):
        timm_compat._private("_hub", "nope")


def _app(seen: dict[str, Any]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def cmd(ctx: typer.Context, a: int = 1, b: int = 2) -> None:
        seen.update(a=typer_compat.parameter_source(ctx, "a"), b=typer_compat.parameter_source(ctx, "b"))

    return app


def test_parameter_source_by_name() -> None:
    seen: dict[str, Any] = {}
    result = CliRunner().invoke(_app(seen), ["--a", "5"])
    assert result.exit_code == 0, result.output
    assert seen == {"a": "COMMANDLINE", "b": "DEFAULT"}


def test_typer_usage_errors_are_passed_through() -> None:
    """A usage error raised by Typer's click (vendored or not) is one of click_exceptions()."""
    app = _app({})
    command = typer.main.get_command(app)
    with pytest.raises(BaseException) as info:
        command.main(["--a", "x"], standalone_mode=False)
    assert isinstance(info.value, typer_compat.click_exceptions()), type(info.value).__mro__
    assert click.exceptions.ClickException in typer_compat.click_exceptions()
