"""``featdump inspect``: the size planned for --images, and module names kept whole at 80 columns."""

from __future__ import annotations

import json

import pytest

from conftest import run


@pytest.mark.slow
def test_inspect_images_json():
    p = run("inspect", "resnet18", "--images", "1000", "--dtype", "float16", "--pool", "avg", "--json", check=True)
    d = json.loads(p.stdout)
    assert d["images"] == 1000
    assert [l["total_bytes"] for l in d["layers"]] == [l["shape"][0] * 2 * 1000 for l in d["layers"]]
    assert d["total_bytes"] == sum(l["total_bytes"] for l in d["layers"])


@pytest.mark.slow
def test_module_names_do_not_wrap_at_80_columns():
    for extra in ([], ["--images", "100000"]):
        p = run("inspect", "efficientnet_b0", *extra, env={"COLUMNS": "80"}, check=True)
        assert all(len(line) <= 80 for line in p.stdout.splitlines())
        assert all(f"blocks.{i} " in p.stdout for i in (0, 1, 2, 4, 6)), p.stdout


def test_describing_a_model_leaves_the_random_state_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that cannot run on meta tensors is described with a real CPU model; its random init
    must not move the seed `--no-pretrained` weights are drawn from, whether the description is
    cached or not (none of the models tried fails on meta: the failure is made here)."""
    import torch

    from featdump.model import levels

    real = levels.describe_layers

    def meta_fails(model, size):  # type: ignore[no-untyped-def]
        if next(model.parameters()).device.type == "meta":
            raise NotImplementedError("no meta kernel")
        return real(model, size)

    monkeypatch.setattr(levels, "describe_layers", meta_fails)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    desc = levels.described_levels.__wrapped__("resnet18", None, None, (64, 64), False)  # uncached
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [x.shape for x in desc.layers] == [x.shape for x in levels.describe_levels("resnet18", img_size=(64, 64)).layers]
