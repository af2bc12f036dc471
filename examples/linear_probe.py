"""A linear probe on pooled features: scikit-image's bundled ``lfw_subset`` (100 faces, 100 non-faces,
25×25 grayscale) written to JPEGs, features extracted with featdump, then logistic regression with
5-fold cross-validation (scikit-learn), next to the same probe on the raw pixels.

    python examples/linear_probe.py --model tf_efficientnet_lite0 --checkpoint weights/tf_efficientnet_lite0.safetensors

(``make demo`` converts those ImageNet weights; ``--pretrained`` uses timm's own, downloaded once.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any


def write_lfw_jpegs(folder: Path) -> dict[str, int]:
    """The 200 images as JPEGs under ``folder``; ``{stored path: label}`` (1 = face)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    images = skimage.data.lfw_subset()  # (200, 25, 25) floats in [0, 1]: 100 faces, then 100 non-faces
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, img in enumerate(images):
        name = f"{'face' if i < 100 else 'other'}-{i:03d}.jpg"
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(folder / name, quality=95)
        labels[name] = int(i < 100)
    return labels


def cv_accuracy(x: Any, y: Any, folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of a standardised logistic regression under stratified k-fold cross-validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, y, cv=cv).mean())


def run_probe(work: Path, model: str, extract_options: dict[str, Any]) -> dict[str, float]:
    """Write the JPEGs, extract pooled features, probe features and pixels: ``{"features": acc, "pixels": acc}``."""
    import numpy as np
    from PIL import Image

    import featdump

    labels = write_lfw_jpegs(work / "lfw")
    out = work / "lfw.h5"
    featdump.extract(model, work / "lfw", out, pool="avg", overwrite=True, quiet=True, progress=False, **extract_options)
    with featdump.open(out) as ff:
        layer = ff.layers[-1]
        dataset = ff.torch(layers=[layer])  # pooled rows as tensors; ff.numpy(layer) would do as well
        x = np.stack([dataset[i][layer].float().numpy() for i in range(len(dataset))])
        y = np.array([labels[p] for p in ff.paths])
        pixels = np.stack([np.asarray(Image.open(work / "lfw" / p), dtype=np.float32).ravel() / 255 for p in ff.paths])
    return {"features": cv_accuracy(x, y), "pixels": cv_accuracy(pixels, y), "layer": layer, "dim": x.shape[1]}  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--checkpoint", default=None, help="weights file (else timm's pretrained weights)")
    p.add_argument("--img-size", default=None)
    p.add_argument("--work", type=Path, default=None, help="folder for the JPEGs and the .h5 [a temporary one]")
    args = p.parse_args(argv)
    options: dict[str, Any] = {"checkpoint": args.checkpoint} if args.checkpoint else {"pretrained": True}
    if args.img_size:
        options["img_size"] = args.img_size
    with tempfile.TemporaryDirectory() as tmp:
        result = run_probe(args.work or Path(tmp), args.model, options)
    print(f"faces vs non-faces, logistic regression, 5-fold CV accuracy ({args.model} {result['layer']}, {result['dim']} dims)")
    print(f"  pooled features: {result['features']:.3f}")
    print(f"  raw pixels:      {result['pixels']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
