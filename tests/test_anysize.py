"""--img-size long:L | short:S | native: each image at its own aspect, numbers equal to timm's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from featdump.data.batching import Loader, ShapeGroups
from featdump.data.discover import ImageRef
from featdump.model.backbone import backbone_for
from featdump.model.layers import LayerInfo, is_ragged, mark_ragged
from featdump.options import ExtractConfig
from featdump.run.forward import Forward
from featdump.values import parse_img_size

from conftest import PHOTOS

pytestmark = pytest.mark.filterwarnings("ignore::featdump.errors.FeatdumpWarning")

# (width, height): wide, tall, square, very wide, tall again, square: shapes differ per image as the aspects do
SIZES = [(150, 100), (70, 160), (90, 90), (200, 60), (64, 128), (120, 120)]


@pytest.fixture(scope="module")
def aspect_refs(tmp_path_factory: pytest.TempPathFactory) -> list[ImageRef]:
    folder = tmp_path_factory.mktemp("aspects")
    refs = []
    for k, (w, h) in enumerate(SIZES):
        path = folder / f"{k}.png"  # lossless: the reference decodes the same pixels with PIL alone
        Image.open(PHOTOS / "astronaut.jpg").convert("RGB").resize((w, h)).save(path)
        refs.append(ImageRef(f"{k}.png", str(path)))
    return refs


def reference_shape(h: int, w: int, mode: str, side: int, unit: int, max_side: int) -> tuple[int, int]:
    if mode == "long":
        scale = side / max(h, w)
    elif mode == "short":
        scale = side / min(h, w)
    else:
        scale = min(1.0, max_side / max(h, w))
    return tuple(max(unit, int(math.floor(v * scale / unit + 0.5)) * unit) for v in (h, w))  # type: ignore[return-value]


def timm_rows(name: str, refs: list[ImageRef], mode: str, side: int, unit: int, max_side: int, **create: Any) -> list[list[np.ndarray]]:
    """timm alone: features_only at any size, each image resized by torchvision's Resize((h, w)) at
    the model's interpolation, to-tensor, the model's mean/std; one image at a time."""
    import timm
    from timm.data import resolve_data_config
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms

    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, **create).eval()
    cfg = resolve_data_config({}, model=model)
    rows = []
    for ref in refs:
        img = Image.open(ref.source).convert("RGB")
        h, w = reference_shape(img.height, img.width, mode, side, unit, max_side)
        tf = transforms.Compose([
            transforms.Resize((h, w), interpolation=str_to_interp_mode(cfg["interpolation"])),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ])  # fmt: skip
        with torch.inference_mode():
            rows.append([o[0].numpy() for o in model(tf(img)[None])])
    return rows


def featdump_rows(
    name: str, refs: list[ImageRef], img_size: Any, batch: int = 2, processes: bool = False, **over: Any
) -> tuple[list[Any], list[list[Any]], list[str]]:
    """Loader + Forward as extract runs them: the loader's windows, the per-layer rows in row order
    (``processes``: decoded by DataLoader workers, the GPU runs' loader)."""
    cfg = ExtractConfig(model=name, inputs=("x",), output="x.h5", img_size=parse_img_size(img_size), **over)
    backbone = backbone_for(cfg)
    loader = Loader(refs, backbone, cfg, torch.device("cpu"), batch, 1, 2, processes=processes)
    forward = Forward(backbone, torch.device("cpu"), "fp32", "none", "float32", False)
    windows, per_layer, paths = [], [[] for _ in backbone.layers], []
    for rows in loader:
        windows.append(rows.pixels)
        for k, out in enumerate(forward(rows.pixels)):
            per_layer[k].extend(list(out))
        paths += rows.paths
    return windows, per_layer, paths


CASES = [
    ("resnet18", {}, 32),
    ("test_vit", {"dynamic_img_size": True}, 16),
    ("vit_small_patch14_dinov2", {"dynamic_img_size": True}, 14),  # long:64 and short:48 are no multiples of 14
]


def test_dataloader_workers_batch_by_shape_alike(aspect_refs: list[ImageRef], random_checkpoint: Any) -> None:
    """The DataLoader's worker processes (GPU runs) group a window by shape as the CPU threads do."""
    over = {"checkpoint": str(random_checkpoint("resnet18")), "out_indices": (4,)}
    windows, got, paths = featdump_rows("resnet18", aspect_refs, "short:48", processes=True, **over)
    _, want, _ = featdump_rows("resnet18", aspect_refs, "short:48", **over)
    assert paths == [r.path for r in aspect_refs] and all(isinstance(w, ShapeGroups) for w in windows)
    for a, b in zip(got[0], want[0], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "create", "unit"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode", ["long:64", "short:48", "native"])
def test_rows_equal_timm_at_each_images_own_shape(
    name: str, create: dict[str, Any], unit: int, mode: str, aspect_refs: list[ImageRef], random_checkpoint: Any
) -> None:
    kind, _, side = mode.partition(":")
    ckpt = random_checkpoint(name)
    over = {"checkpoint": str(ckpt), "max_side": 96}
    windows, got, paths = featdump_rows(name, aspect_refs, mode, **over)
    want = timm_rows(name, aspect_refs, kind, int(side or 0), unit, 96, pretrained=True,
                     pretrained_cfg_overlay={"file": str(ckpt)}, **create)  # fmt: skip
    assert paths == [r.path for r in aspect_refs]  # rows stay in input order
    for groups in windows:  # a batch never mixes shapes, and holds at most the batch size
        assert isinstance(groups, ShapeGroups)
        assert all(x.shape[0] <= 2 for _, x in groups.groups)
        assert sorted(r for rows, _ in groups.groups for r in rows) == list(range(groups.count))
    shapes = set()
    for i, ref_rows in enumerate(want):
        for k, ref in enumerate(ref_rows):
            assert got[k][i].shape == ref.shape, (i, k)
            np.testing.assert_allclose(got[k][i], ref, rtol=1e-4, atol=1e-4)
        shapes.add(ref_rows[-1].shape)
    assert len(shapes) >= 3  # the aspect ratios give different grids


@pytest.mark.slow  # several seconds: the whole suite runs it
def test_naflex_at_each_images_own_patch_grid(aspect_refs: list[ImageRef]) -> None:
    """A NaFlex ViT (random weights, seed 0 in both) takes each image's own patch grid."""
    name = "naflexvit_base_patch16_gap"
    refs = aspect_refs[:3]
    _, got, _ = featdump_rows(name, refs, "long:48", pretrained=False, out_indices=(-1,))
    want = timm_rows(name, refs, "long", 48, 16, 2048, pretrained=False, out_indices=(-1,))
    for i, ref_rows in enumerate(want):
        assert got[0][i].shape == ref_rows[0].shape
        np.testing.assert_allclose(got[0][i], ref_rows[0], rtol=1e-4, atol=1e-4)


def test_ragged_marks_spatial_maps_only() -> None:
    layers = [
        LayerInfo("layer4", "layer4", 4, 512, 32, (512, 2, 2)),
        LayerInfo("blocks.1", "blocks.1", -1, 192, 16, (192, 4, 4), "NLC", {"tokens": "map"}),
        LayerInfo("blocks.1.prefix", "blocks.1", -1, 192, 0, (1, 192), "NLC", {"part": "prefix"}),
        LayerInfo("head", "head", -1, 10, 0, (10,), "NLC"),
    ]
    marked = mark_ragged(layers)
    assert [is_ragged(x, "none") for x in marked] == [True, True, False, False]
    assert not any(is_ragged(x, "avg") for x in marked)  # a pooled layer stays (N, C)
    assert not any(is_ragged(x, "none") for x in layers)  # fixed runs: nothing ragged
    assert marked[0].shape == layers[0].shape


@pytest.mark.parametrize(
    ("raw", "want"),
    [("long:512", ("long", 512)), ("SHORT: 256", ("short", 256)), ("native", ("native", 0)), (["long", 64], ("long", 64)), ("224", (224, 224))],
)
def test_parse_size_modes(raw: Any, want: Any) -> None:
    assert parse_img_size(raw) == want


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"img_size": "long:4"}, "out of range"),
        ({"img_size": "wide:512"}, "--img-size takes SIZE or HEIGHTxWIDTH"),
        ({"img_size": "long:64", "process": "l2norm"}, r"^--process needs a fixed --img-size"),
        ({"img_size": "native", "fast_decode": True}, r"^--fast-decode needs a fixed --img-size"),
        ({"img_size": "long:64", "max_side": 512}, r"^--max-side bounds the images of --img-size native only"),
        ({"max_side": 512}, r"^--max-side bounds"),  # ignored, yet recorded: --resume and merge would then refuse
        ({"img_size": "short:64", "crop_pct": 0.9}, r"^--crop-pct: a crop needs a fixed --img-size; .* drop --crop-pct$"),
        ({"tiles": 64, "crop_mode": "squash", "crop_pct": 1}, r"^--crop-mode and --crop-pct: a crop needs"),  # else silently ignored
    ],
)
def test_size_mode_refusals(over: dict[str, Any], message: str) -> None:
    from featdump.configure import resolve
    from featdump.errors import UsageError

    with pytest.raises(UsageError, match=message):
        resolve({"model": "resnet18", "inputs": ["x"], "output": "x.h5", **over})


def test_a_configured_crop_is_refused_with_a_size_mode_unless_like_replaces_it() -> None:
    from featdump.configure import resolve
    from featdump.errors import UsageError

    base = {"model": "resnet18", "inputs": ["x"], "output": "x.h5"}
    with pytest.raises(UsageError, match=r"^--crop-pct: a crop needs a fixed --img-size"):
        resolve({**base, "img_size": "long:64"}, file_values={"crop_pct": 0.5})
    cfg = resolve(base, file_values={"crop_pct": 0.5}, like_values={"img_size": ("long", 64), "crop_pct": 0.9})
    assert cfg.crop_pct == 0.9  # the --like file's values win over the config file's, and carry no refusal


def test_a_model_that_cannot_vary_is_refused_by_name() -> None:
    from featdump.errors import UsageError
    from featdump.model.backbone import describe

    for mode in (("long", 224), ("long", 64)):  # 64: too small for levit's own square, still the usage error
        with pytest.raises(UsageError, match=r"^levit_128s cannot take images of varying shapes"):
            describe("levit_128s", img_size=mode)
    desc = describe("resnet18", img_size=("long", 512), output_stride=16)
    assert desc.data.unit == 16 and all(is_ragged(x, "none") for x in desc.layers)
    assert desc.layers[-1].shape == (512, 32, 32)  # the nominal square: an upper bound of long:512


def test_extract_long_writes_each_row_at_its_grid(aspect_refs: list[ImageRef], random_checkpoint: Any, tmp_path: Any) -> None:
    """End to end: ``extract --img-size long:64``, read back per row, equal to timm; /geometry maps the
    resized input back to the original pixels."""
    import featdump

    ckpt = random_checkpoint("resnet18")
    out = tmp_path / "long.h5"
    featdump.extract("resnet18", [r.source for r in aspect_refs], out, img_size="long:64", checkpoint=ckpt,
                     out_indices=(2, 4), batch_size=2, quiet=True)  # fmt: skip
    want = timm_rows("resnet18", aspect_refs, "long", 64, 32, 2048, pretrained=True,
                     pretrained_cfg_overlay={"file": str(ckpt)}, out_indices=(2, 4))  # fmt: skip
    with featdump.open(out) as f:
        assert f.meta["img_size_mode"] == "long:64" and f.paths == [r.source for r in aspect_refs]
        for i, (w, h) in enumerate(SIZES):
            for k, layer in enumerate(("layer2", "layer4")):
                np.testing.assert_allclose(f.numpy(layer, i), want[i][k], rtol=1e-4, atol=1e-4)
            hi, wi = reference_shape(h, w, "long", 64, 32, 2048)
            assert f.cells("layer4")[i].tolist()[1:] == [hi // 32, wi // 32]
    import h5py

    with h5py.File(out, "r") as h5:
        geometry = h5["geometry"][:]
    for i, (w, h) in enumerate(SIZES):
        hi, wi = reference_shape(h, w, "long", 64, 32, 2048)
        np.testing.assert_allclose(geometry[i], [h, w, h / hi, w / wi, 0, 0])
    from featdump.run.verify import verify_file

    assert verify_file(out, n=3, device="cpu").ok  # re-extracted rows, each at its own shape


@pytest.mark.slow  # real CLI processes: the fast tier stays under about 2 minutes
def test_inspect_shows_the_unit_and_an_example_photos_grids() -> None:
    import json

    from conftest import run

    proc = run("inspect", "resnet18", "--img-size", "long:512", "--out-indices", "2,4", "--json", check=True)
    got = json.loads(proc.stdout)
    assert got["data_config"]["img_size_mode"] == "long:512" and got["data_config"]["unit"] == 32
    assert got["data_config"]["input_size"] == [3, 384, 512]  # a 4032x3024 photo at long:512
    assert [x["shape"] for x in got["layers"]] == [[128, 48, 64], [512, 12, 16]]
    text = run("inspect", "test_vit", "--img-size", "short:64", check=True).stdout
    assert "multiples of 16 (the unit)" in " ".join(text.split()) and "64×80" in text  # 3024x4032 -> 64x85 -> 64x80
    text = run("inspect", "resnet18", "--img-size", "long:100", check=True).stdout
    assert "long:100" in text and "\N{HUNDRED POINTS SYMBOL}" not in text  # rich read ':100:' as an emoji code


def test_pooled_size_mode_stays_fixed_and_like_reproduces(aspect_refs: list[ImageRef], tmp_path: Any) -> None:
    """``--pool avg`` with a size mode stores (N, C), the mean of each row's own map; ``--like`` takes
    the size mode (and --max-side) from the file."""
    import h5py

    import featdump

    sources = [r.source for r in aspect_refs]
    kw = {"pretrained": False, "out_indices": (4,), "batch_size": 2, "quiet": True, "max_side": 96}
    featdump.extract("resnet18", sources, tmp_path / "maps.h5", img_size="native", **kw)
    featdump.extract("resnet18", sources, tmp_path / "pooled.h5", img_size="native", pool="avg", **kw)
    featdump.extract("resnet18", sources, tmp_path / "like.h5", like=tmp_path / "maps.h5", quiet=True)
    with featdump.open(tmp_path / "maps.h5") as maps, featdump.open(tmp_path / "pooled.h5") as pooled:
        rows = maps.numpy("layer4", list(range(len(sources))))
        assert len({r.shape for r in rows}) >= 3
        np.testing.assert_allclose(pooled["layer4"][:],
                                   np.stack([r.mean(axis=(1, 2)) for r in rows]), rtol=1e-5, atol=1e-6)  # fmt: skip
    with h5py.File(tmp_path / "pooled.h5") as f:
        assert f["features/layer4"].attrs["layout"] == "NC" and "cells" not in f
    with h5py.File(tmp_path / "maps.h5") as a, h5py.File(tmp_path / "like.h5") as b:
        assert (b.attrs["img_size_mode"], b.attrs["max_side"]) == ("native", 96) == (a.attrs["img_size_mode"], a.attrs["max_side"])
        np.testing.assert_array_equal(b["features/layer4"][:], a["features/layer4"][:])


def test_resume_after_a_stop_gives_the_rows_of_one_run(aspect_refs: list[ImageRef], tmp_path: Any) -> None:
    """A run stopped after its first window (4 batches of refs, batched by shape) and resumed holds
    exactly the rows, in order, of an uninterrupted run."""
    import dataclasses
    import signal

    import h5py

    from featdump.configure import resolve
    from featdump.errors import Interrupted
    from featdump.run.job import run_extraction
    from featdump.run.results import ProgressSink
    from featdump.run.signals import StopToken

    sources = [r.source for r in aspect_refs]
    base = {"model": "resnet18", "inputs": sources, "img_size": "long:64", "pretrained": False, "out_indices": [3],
            "batch_size": 1, "quiet": True}  # fmt: skip
    whole = resolve({**base, "output": str(tmp_path / "whole.h5")})
    run_extraction(whole)
    cut = resolve({**base, "output": str(tmp_path / "cut.h5")})
    stop = StopToken()

    class StopAfterFirst(ProgressSink):
        def advance(self, images: int) -> None:
            stop.request(signal.SIGINT)

    with pytest.raises(Interrupted):
        run_extraction(cut, StopAfterFirst(), stop=stop)
    with h5py.File(cut.output) as f:
        assert len(f["paths"]) == 4  # one window: 4 batches of 1
    run_extraction(dataclasses.replace(cut, resume=True))
    with h5py.File(whole.output) as a, h5py.File(cut.output) as b:
        assert list(b["paths"]) == list(a["paths"])
        np.testing.assert_array_equal(b["cells/layer3"][:], a["cells/layer3"][:])
        np.testing.assert_array_equal(b["features/layer3"][:], a["features/layer3"][:])


def test_named_modules_in_a_size_mode_must_follow_each_shape() -> None:
    """--layers in a size mode: CNN maps follow each input (a non-spatial module rides along); a
    ViT's token map (--tokens map or both) is built for one grid, refused before any row as a token
    layer (not as a model that cannot vary: its feature levels can)."""
    from featdump.errors import UsageError

    def config(name: str, layers: tuple[str, ...], tokens: str = "seq") -> ExtractConfig:
        return ExtractConfig(model=name, inputs=("x",), output="x.h5", img_size=("short", 48), layers=layers, tokens=tokens, pretrained=False)

    for tokens in ("map", "both"):
        with pytest.raises(UsageError, match=r"which token layers of --layers cannot follow: take this model's feature levels"):
            backbone_for(config("test_vit", ("blocks.0",), tokens))
    backbone = backbone_for(config("resnet18", ("layer2", "fc")))
    assert [is_ragged(x, "none") for x in backbone.layers] == [True, False]


def test_short_side_mode_keeps_the_cpu_batch_of_large_inputs(cli: Any, tmp_path: Any) -> None:
    """``short:S`` resizes a 4:3 photo to more than its S x S square (256x352 here, over 288x288):
    resnet18 keeps batch 8 on a CPU, as at a fixed size over 288x288, where ``long:256`` takes 16."""
    import h5py

    photo = tmp_path / "photo.png"
    Image.new("RGB", (400, 300), (90, 120, 150)).save(photo)
    args = ("resnet18", str(photo), "--no-pretrained", "--device", "cpu", "-q")
    for mode, batch in (("short:256", 8), ("long:256", 16)):
        out = tmp_path / f"{mode[:4]}.h5"
        assert cli("extract", *args, "--img-size", mode, "-o", str(out)).exit_code == 0
        with h5py.File(out) as f:
            assert (f.attrs["img_size_mode"], f.attrs["batch_size"]) == (mode, batch)
