"""Real ImageNet weights catch wrong preprocessing: stored features -> the model's own head -> labels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

CAT = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def head(lite0_weights):
    import timm
    import torch

    model = timm.create_model(
        "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=dict(file=str(lite0_weights))
    ).eval()

    def classify(last_level: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(last_level.astype(np.float32))
            x = model.bn2(model.conv_head(x))
            return model.forward_head(x).softmax(-1).numpy()

    return classify


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_chelsea_is_a_cat_and_coffee_an_espresso(cli, lite0_weights, photos, tmp_path, head, dtype):
    out = tmp_path / "lite0.h5"
    images = [str(photos / "chelsea.jpg"), str(photos / "coffee.jpg"), str(photos / "rocket.jpg")]
    result = cli(
        "extract", "tf_efficientnet_lite0", *images, "-o", str(out), "--checkpoint", str(lite0_weights),
        "--out-indices", "-1", "--dtype", dtype, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        paths = [p.decode() for p in f["paths"][:]]
        probs = head(f["features/blocks.6"][:])
    top5 = {p: set(np.argsort(-probs[i])[:5].tolist()) for i, p in enumerate(paths)}
    top1 = {p: int(np.argmax(probs[i])) for i, p in enumerate(paths)}
    assert top1[images[0]] in CAT, top5
    assert ESPRESSO in top5[images[1]], top5
    assert top1[images[1]] == ESPRESSO, top5
    assert not (top5[images[2]] & (set(CAT) | {ESPRESSO}))
    # Confidence as timm's exact transform gives it (0.92 / 0.94); plausible preprocessing bugs
    # (ImageNet mean/std instead of the model's, BGR, no normalisation) all fall below 0.9.
    assert probs[paths.index(images[0]), 281:286].sum() > 0.9
    assert probs[paths.index(images[1]), ESPRESSO] > 0.9


@pytest.mark.parametrize(
    "mean,std,scale",
    [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0), ((0.5,) * 3, (0.5,) * 3, 255.0), ((0,) * 3, (1,) * 3, 1.0)],
    ids=["imagenet-mean-std", "0-255-range", "no-normalisation"],
)
def test_wrong_preprocessing_would_be_caught(lite0_weights, photos, head, mean, std, scale):
    """The checks above fail for plausible preprocessing bugs: the test can fail."""
    import timm
    import torch
    from timm.data import create_transform

    from featdump.data.decode import load_rgb

    model = timm.create_model(
        "tf_efficientnet_lite0", features_only=True, out_indices=(-1,), pretrained=True,
        pretrained_cfg_overlay=dict(file=str(lite0_weights)),
    ).eval()  # fmt: skip
    wrong = create_transform(input_size=(3, 224, 224), mean=mean, std=std, crop_pct=0.875, interpolation="bicubic")
    with torch.inference_mode():
        x = torch.stack([wrong(load_rgb(str(photos / n))) for n in ("chelsea.jpg", "coffee.jpg")]) * scale
        probs = head(model(x)[0].numpy())
    passes = int(np.argmax(probs[0])) in CAT and int(np.argmax(probs[1])) == ESPRESSO
    assert not (passes and probs[0, 281:286].sum() > 0.9 and probs[1, ESPRESSO] > 0.9)
