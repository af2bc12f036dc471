"""Train a segmentation-style head on dense maps stored at each image's own aspect ratio.

Store one level of every photo at its own aspect (long side 512 pixels, no crop, no padding):

    featdump extract tf_efficientnet_lite0 photos/ -o feats.h5 --img-size long:512 --out-indices 3 --dtype float32

then train a 1x1-conv head on the stored cells, without the backbone:

    python examples/seg_head.py feats.h5 photos/ --layer blocks.4

The rows have different grids (a 4:3 photo gives 24x32 cells at stride 16, a 3:4 one 32x24), so
batches go through ``featdump.collate``: it pads each batch to its largest grid with zeros and adds
``"<layer>.mask"``, True on the cells that are real; the loss counts only those. The labels are a
stand-in for real masks, made from the photos themselves (is the cell brighter than the median cell
of its photo?) through ``pixel_boxes``: each cell's box in the original pixels, which is how a mask
image is turned into one label per cell. (tests/test_examples_use.py runs it.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np


def cell_labels(ff: Any, layer: str, root: Path) -> list[np.ndarray]:
    """Per row, (h, w) float32 labels: 1 where the cell's box in the original photo is brighter
    than the photo's median cell (box means from an integral image of the grey photo)."""
    from PIL import Image, ImageOps

    labels = []
    for row, path in enumerate(ff.paths):
        with Image.open(root / path) as img:
            grey = np.asarray(ImageOps.exif_transpose(img).convert("L"), dtype=np.float64)
        total = np.pad(grey.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        boxes = ff.pixel_boxes(layer, row)  # (h, w, 4): y0, x0, y1, x1 in original pixels
        y0, x0 = (np.floor(boxes[..., k]).astype(int) for k in (0, 1))
        y1 = np.maximum(np.ceil(boxes[..., 2]).astype(int), y0 + 1)
        x1 = np.maximum(np.ceil(boxes[..., 3]).astype(int), x0 + 1)
        means = (total[y1, x1] - total[y0, x1] - total[y1, x0] + total[y0, x0]) / ((y1 - y0) * (x1 - x0))
        labels.append((means > np.median(means)).astype(np.float32))
    return labels


def train(path: str | Path, root: str | Path, layer: str, epochs: int = 40, batch_size: int = 4, workers: int = 0, seed: int = 0) -> tuple[Any, list[float], float]:
    """A 1x1 conv trained on the stored cells of ``layer``: ``(head, loss per epoch, accuracy)``,
    the accuracy over every real cell after training (padding never counts)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import featdump

    torch.manual_seed(seed)
    with featdump.open(path) as ff:
        labels = [torch.from_numpy(y) for y in cell_labels(ff, layer, Path(root))]
        dataset = ff.torch(layers=layer, dtype=torch.float32)
        channels = int(ff.attrs(layer)["channels"])
    head = torch.nn.Sequential(torch.nn.BatchNorm2d(channels, affine=False), torch.nn.Conv2d(channels, 1, 1))
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=featdump.collate)

    def targets(batch: dict[str, Any]) -> Any:
        x = batch[layer]
        out = torch.zeros(x.shape[0], *x.shape[2:])
        for k, row in enumerate(batch["row"].tolist()):
            h, w = labels[row].shape
            out[k, :h, :w] = labels[row]
        return out

    losses = []
    for _ in range(epochs):
        head.train()
        total, count = 0.0, 0
        for batch in loader:
            mask = batch[f"{layer}.mask"]
            logits = head(batch[layer])[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits[mask], targets(batch)[mask])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, count = total + loss.item() * int(mask.sum()), count + int(mask.sum())
        losses.append(total / count)
    head.eval()
    right = cells = 0
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=featdump.collate):
            mask = batch[f"{layer}.mask"]
            guess = head(batch[layer])[:, 0] > 0
            right += int((guess == targets(batch).bool())[mask].sum())
            cells += int(mask.sum())
    return head, losses, right / cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", type=Path, help="a featdump file made with --img-size long:L (ragged layers)")
    p.add_argument("images", type=Path, help="the folder the file was extracted from")
    p.add_argument("--layer", required=True, help="a stored spatial layer")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    _, losses, accuracy = train(args.features, args.images, args.layer, args.epochs, workers=args.workers)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs; cell accuracy {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
