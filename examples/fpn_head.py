"""Feed stored multi-scale maps to a feature pyramid network: resnet50 levels 1-4, read through
``FeatureFile.torch()``, into ``torchvision.ops.FeaturePyramidNetwork``.

Store the levels once (float32, so the head sees exactly what the backbone gave):

    featdump extract resnet50 photos/ -o feats.h5 --out-indices 1,2,3,4 --dtype float32

then train or run heads on the file as often as you like, without the backbone:

    python examples/fpn_head.py feats.h5

(tests/test_examples_use.py checks that the outputs equal those of the same FPN fed with timm's live
``features_only`` outputs for the same images.)
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

LEVELS = ["layer1", "layer2", "layer3", "layer4"]  # resnet50 --out-indices 1,2,3,4


def build_fpn(in_channels: list[int], out_channels: int = 64, seed: int = 0) -> Any:
    """A torchvision FPN with seeded weights (the same head for every caller)."""
    import torch
    from torchvision.ops import FeaturePyramidNetwork

    torch.manual_seed(seed)
    return FeaturePyramidNetwork(in_channels, out_channels).eval()


def fpn_from_file(path: str | Path, out_channels: int = 64, batch_size: int = 4, workers: int = 2) -> dict[str, Any]:
    """Run the FPN over every stored image: ``{level: (N, out_channels, H, W)}``, rows in file order."""
    import torch
    from torch.utils.data import DataLoader

    import featdump

    with featdump.open(path) as ff:
        channels = [int(ff.attrs(name)["channels"]) for name in LEVELS]
        dataset = ff.torch(layers=LEVELS, dtype=torch.float32)
    fpn = build_fpn(channels, out_channels)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=dataset.collate)
    outs: dict[str, list[Any]] = {name: [] for name in LEVELS}
    with torch.inference_mode():
        for batch in loader:
            pyramid = fpn(OrderedDict((name, batch[name]) for name in LEVELS))
            for name in LEVELS:
                outs[name].append(pyramid[name])
    return {name: torch.cat(parts) for name, parts in outs.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", type=Path, help="a featdump file of resnet50 --out-indices 1,2,3,4")
    p.add_argument("--out-channels", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    outs = fpn_from_file(args.features, args.out_channels, workers=args.workers)
    for name, x in outs.items():
        print(f"{name}: {tuple(x.shape)}  mean {x.mean():.4f}  std {x.std():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
