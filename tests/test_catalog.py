"""``featdump models``: glob, --pretrained, the --output-stride column (checked against real builds), --json."""

from __future__ import annotations

import json

import pytest

from featdump.errors import UsageError
from featdump.model.backbone import describe
from featdump.model.catalog import supports_output_stride

from conftest import run


def test_models_json_glob(cli) -> None:
    res = cli("models", "resnet1*", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"resnet18", "resnet101", "resnet18d"} <= set(rows)
    assert all(name.startswith("resnet1") for name in rows)
    assert rows["resnet18"]["output_stride"] is True
    assert "a1_in1k" in rows["resnet18"]["pretrained_tags"]


def test_models_pretrained_filter_and_table(cli) -> None:
    everything = {r["name"] for r in json.loads(cli("models", "convnext_*", "--json").stdout)}
    with_weights = json.loads(cli("models", "convnext_*", "--pretrained", "--json").stdout)
    assert with_weights and {r["name"] for r in with_weights} < everything
    assert all(r["pretrained_tags"] for r in with_weights)
    assert "convnext_atto_rms" in everything - {r["name"] for r in with_weights}  # an architecture without weights
    table = cli("models", "vit_tiny_patch16_2*")
    assert table.exit_code == 0 and "vit_tiny_patch16_224" in table.stdout and "--output-stride" in table.stdout
    names = cli("models", "resnet18*", "--quiet").stdout.split()
    assert names[0] == "resnet18" and "resnet18d" in names


def test_models_no_match_is_a_usage_error(cli) -> None:
    res = cli("models", "no_such_model_*")
    assert res.exit_code == 2 and res.stdout == "" and "no timm model matches 'no_such_model_*'" in res.stderr
    assert cli("models", "no_such_model_*", "--json").exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["resnet18", "convnext_atto", "efficientnet_b0", "regnetx_002", "vit_tiny_patch16_224", "dla34", "vgg11",
     "hrnet_w18_small", "ghostnet_100", "mobilenetv3_small_050", "cspresnet50", "swin_tiny_patch4_window7_224",
     "vit_small_r26_s32_224", "vit_small_resnet26d_224"],
)  # fmt: skip
def test_output_stride_column_matches_a_real_build(name: str) -> None:
    """The cheap answer (from source) agrees with building the model at --output-stride 16."""
    try:
        describe(name, output_stride=16)
        works = True
    except UsageError:
        works = False
    assert supports_output_stride(name) is works


@pytest.mark.slow
def test_models_json_nothing_else_on_stdout() -> None:
    proc = run("models", "resnet18", "--json", check=True)
    assert json.loads(proc.stdout) == [
        {"name": "resnet18", "pretrained_tags": json.loads(proc.stdout)[0]["pretrained_tags"], "output_stride": True}
    ]


@pytest.mark.slow
def test_models_nothing_matches():
    p = run("models", "zzz*")
    assert p.returncode == 2 and "no timm model matches 'zzz*'" in p.stderr
