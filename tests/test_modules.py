"""``--layers``: any module by name, through the real command, compared with timm's own modules."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

PICS = ["astronaut.jpg", "coffee.jpg"]


def _images(photos: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in PICS:
        (folder / name).write_bytes((photos / name).read_bytes())
    return folder


def _pixels(folder: Path, model: object) -> object:
    import torch
    from timm.data import create_transform, resolve_data_config

    from featdump.data.decode import load_rgb

    cfg = resolve_data_config({}, model=model)
    transform = create_transform(**cfg, is_training=False)
    return torch.stack([transform(load_rgb(str(folder / n))) for n in PICS])


def _close(a: np.ndarray, b: np.ndarray) -> None:
    scale = float(np.abs(b).max()) or 1.0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


def test_inspect_layers_json(cli) -> None:
    res = cli("inspect", "resnet18", "--layers", "layer1.0.conv1,layer3,fc", "--img-size", "64", "--json")
    assert res.exit_code == 0, res.output
    layers = json.loads(res.stdout)["layers"]
    assert [(l["name"], l["index"], l["shape"], l["reduction"]) for l in layers] == [
        ("layer1.0.conv1", -1, [64, 16, 16], 4),
        ("layer3", -1, [256, 4, 4], 16),
        ("fc", -1, [1000], 0),
    ]


def test_all_modules_lists_shapes(cli) -> None:
    res = cli("inspect", "vit_tiny_patch16_224", "--all-modules", "--json")
    assert res.exit_code == 0, res.output
    mods = {m["name"]: m for m in json.loads(res.stdout)["modules"]}
    assert mods["blocks.3"]["shape"] == [197, 192] and mods["blocks.3"]["type"] == "Block"
    assert mods["blocks.3.mlp.fc1"]["shape"] == [197, 768]
    table = cli("inspect", "resnet18", "--all-modules")
    assert (
        table.exit_code == 0 and "layer4.1.conv2" in table.stdout and "any of these works with --layers" in table.stdout
    )


def test_unknown_module_exits_2_with_close_matches(cli) -> None:
    res = cli("inspect", "vit_tiny_patch16_224", "--layers", "blocks.1x")
    assert res.exit_code == 2
    assert "vit_tiny_patch16_224 has no module 'blocks.1x'; close matches: blocks.1, blocks.11" in res.stderr
    res = cli("inspect", "resnet18", "--layers", "layer1", "--out-indices", "1")
    assert res.exit_code == 2 and "exclude each other" in res.stderr


def test_cannot_run_blames_the_size_only_when_the_model_runs_at_its_own() -> None:
    import torch

    from featdump.errors import UsageError
    from featdump.model.create import cannot_run
    from featdump.model.levels import features_model

    with torch.device("meta"):
        model = features_model("resnet18", out_indices=None, output_stride=None, img_size=None)
    failed = RuntimeError("size mismatch")
    assert isinstance(cannot_run("resnet18", model, (3, 200, 200), failed), UsageError)
    assert cannot_run("resnet18", model, (3, 224, 224), failed) is failed  # its own size fails too: not the size
    missing = NotImplementedError("no kernel")
    assert cannot_run("resnet18", model, (3, 200, 200), missing) is missing


@pytest.mark.parametrize("layers", [(), ("--layers", "stages.0")])
def test_a_size_the_model_cannot_run_at_exits_2_naming_its_own(cli, layers: tuple[str, ...]) -> None:
    res = cli("inspect", "levit_128s", "--img-size", "200", *layers)  # levit's attention biases: 224's grids
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("featdump: error: levit_128s cannot run at 200x200 (")
    assert res.stderr.rstrip().endswith("give another --img-size or --tiles size, e.g. its own 224")


def test_resnet_modules_match_timm(cli, photos: Path, tmp_path: Path, random_checkpoint) -> None:
    import timm
    import torch

    ckpt = random_checkpoint("resnet18")
    folder = _images(photos, tmp_path)
    out = tmp_path / "r18.h5"
    res = cli("extract", "resnet18", str(folder), "-o", str(out), "--checkpoint", str(ckpt),
              "--layers", "layer1.0.conv1,layer2,fc", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output

    ref = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    x = _pixels(folder, ref)
    with torch.inference_mode():
        stem = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
        want = {
            "layer1.0.conv1": ref.layer1[0].conv1(stem).numpy(),
            "layer2": ref.layer2(ref.layer1(stem)).numpy(),
            "fc": ref(x).numpy(),
        }
    with h5py.File(out) as f:
        assert list(f["features"]) == ["layer1.0.conv1", "layer2", "fc"]
        assert f.attrs["out_indices"].size == 0 and list(f.attrs["layers"]) == ["layer1.0.conv1", "layer2", "fc"]
        for name, value in want.items():
            ds = f["features"][name]
            assert ds.attrs["index"] == -1 and ds.attrs["module"] == name
            _close(ds[:], value)
        assert f["features/fc"].attrs["layout"] == "NC"


@pytest.mark.slow
def test_vit_tokens_seq_map_and_pool_match_timm(cli, photos: Path, tmp_path: Path, random_checkpoint) -> None:
    import timm
    import torch

    ckpt = random_checkpoint("vit_tiny_patch16_224")
    folder = _images(photos, tmp_path)
    seq, grid, pooled = tmp_path / "seq.h5", tmp_path / "map.h5", tmp_path / "pool.h5"
    common = ["--checkpoint", str(ckpt), "--layers", "blocks.1,blocks.3", "--quiet", "--batch-size", "2"]
    for out, extra in ((seq, []), (grid, ["--tokens", "map"]), (pooled, ["--pool", "avg"])):
        res = cli("extract", "vit_tiny_patch16_224", str(folder), "-o", str(out), *common, *extra)
        assert res.exit_code == 0, res.output

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)))
    ref = ref.eval()
    x = _pixels(folder, ref)
    with torch.inference_mode():
        maps = [m.numpy() for m in ref.forward_intermediates(x, indices=[1, 3], intermediates_only=True)]
        captured = {}
        hooks = [
            ref.blocks[i].register_forward_hook(lambda m, i_, o, i=i: captured.setdefault(i, o.clone())) for i in (1, 3)
        ]
        ref(x)
        for h in hooks:
            h.remove()
    with h5py.File(seq) as f:
        ds = f["features/blocks.3"]
        assert ds.shape == (2, 197, 192) and ds.attrs["layout"] == "NTD"
        assert ds.attrs["num_prefix_tokens"] == 1 and list(ds.attrs["grid"]) == [14, 14]
        _close(ds[:], captured[3].numpy())
        _close(f["features/blocks.1"][:], captured[1].numpy())
        tokens = ds[:]
    with h5py.File(grid) as f:
        ds = f["features/blocks.3"]
        assert ds.shape == (2, 192, 14, 14) and ds.attrs["layout"] == "NCHW" and ds.attrs["tokens"] == "map"
        _close(f["features/blocks.1"][:], maps[0])
        _close(ds[:], maps[1])
    with h5py.File(pooled) as f:
        ds = f["features/blocks.3"]
        assert ds.shape == (2, 192)
        _close(ds[:], tokens[:, 1:].mean(axis=1))  # patch tokens only, like timm's global_pool="avg"


@pytest.mark.parametrize(
    ("model", "layer", "message"),
    [
        ("vit_tiny_patch16_224", "blocks.0.attn.attn_drop", "never runs in the forward pass"),  # fused attention
        ("vit_tiny_patch16_224", "blocks.0.attn.qkv", None),
        ("swin_tiny_patch4_window7_224", "layers.2.blocks.0.attn", "first axis is not the image batch"),
    ],
)
def test_module_edge_cases(cli, model: str, layer: str, message: str | None) -> None:
    res = cli("inspect", model, "--layers", layer, "--json")
    if message is None:
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["layers"][0]["shape"] == [197, 576]
    else:
        assert res.exit_code == 2 and message in res.stderr


@pytest.mark.slow
def test_swin_nhwc_modules_are_stored_nchw(cli, photos: Path, tmp_path: Path, random_checkpoint) -> None:
    import timm
    import torch

    ckpt = random_checkpoint("swin_tiny_patch4_window7_224")
    folder = _images(photos, tmp_path)
    out = tmp_path / "swin.h5"
    res = cli("extract", "swin_tiny_patch4_window7_224", str(folder), "-o", str(out), "--checkpoint", str(ckpt),
              "--layers", "layers.1,norm", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    ref = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))
    )
    ref = ref.eval()
    x = _pixels(folder, ref)
    with torch.inference_mode():
        stages = ref.layers[1](ref.layers[0](ref.patch_embed(x)))  # (N, H, W, C) as timm's Swin returns them
        final = ref.forward_features(x)
    with h5py.File(out) as f:
        assert f["features/layers.1"].shape == (2, 192, 28, 28) and f["features/layers.1"].attrs["reduction"] == 8
        _close(f["features/layers.1"][:], stages.permute(0, 3, 1, 2).numpy())
        _close(f["features/norm"][:], final.permute(0, 3, 1, 2).numpy())
