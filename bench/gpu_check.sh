#!/usr/bin/env bash
# The GPU check, in one script: on a fresh CUDA node that has torch, timm, h5py, typer,
# rich and pillow, it prints for resnet50 (layer3+layer4, float16 storage, bf16 autocast) over a few
# thousand generated JPEGs:
#   bare bf16 forward img/s on pre-decoded tensors (no decoding, no copy back, no writer),
#   featdump img/s with CPU decoding and with --decode gpu, and the ratios to the bare forward.
# Target: featdump with --decode gpu >= 0.8 x the bare forward.
#
# Carry featdump and hdf5plugin as wheels (the node needs no index):
#   pip wheel . -w .whl --no-deps            # featdump, from the repository
#   pip download hdf5plugin -d .whl --no-deps --only-binary=:all:   # from PyPI, on a machine with internet
# then copy the repository (with .whl/) to the node and run:  bash bench/gpu_check.sh
#
# Settings: GPU_CHECK_DEVICE [cuda] (cpu: a dry run of the whole script, --decode gpu skipped),
# GPU_CHECK_IMAGES [3000], GPU_CHECK_BATCH [128], GPU_CHECK_DIR [a temporary folder, removed],
# PYTHON [python3]. Finishes in well under 8 minutes on an H100/H200 class node with 16 cores.
set -euo pipefail

PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
IMAGES=${GPU_CHECK_IMAGES:-3000}
BATCH=${GPU_CHECK_BATCH:-128}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${GPU_CHECK_DIR:-$(mktemp -d)}
[ -n "${GPU_CHECK_DIR:-}" ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE

if [ -d "$HERE/.whl" ] && ! "$PY" -c "import featdump, hdf5plugin" 2>/dev/null; then
  echo "== installing the carried wheels (.whl/)"
  "$PY" -m pip install --quiet --no-index --no-deps "$HERE"/.whl/*.whl
fi
"$PY" -c "import featdump, hdf5plugin, torch, timm, h5py" || { echo "gpu_check: featdump or a dependency is missing (see the top of this script)"; exit 2; }
if [ "$DEVICE" != "cpu" ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "gpu_check: no CUDA device (GPU_CHECK_DEVICE=cpu for a dry run)"; exit 2; }
fi

echo "== $IMAGES JPEGs in $WORK/images"
"$PY" - "$WORK/images" "$IMAGES" <<'PYEOF'
import os, sys
from concurrent.futures import ProcessPoolExecutor
from PIL import Image
import numpy as np

def make(i):
    rng = np.random.default_rng(i)
    h, w = 375 + (i % 5) * 25, 500 - (i % 3) * 50  # ImageNet-like sizes
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    img.save(os.path.join(sys.argv[1], f"{i:06d}.jpg"), quality=90)

os.makedirs(sys.argv[1], exist_ok=True)
with ProcessPoolExecutor(os.cpu_count()) as ex:
    list(ex.map(make, range(int(sys.argv[2])), chunksize=64))
PYEOF

echo "== bare forward (bf16 autocast, channels_last, layer3+layer4, pre-decoded tensors)"
BARE=$("$PY" - "$DEVICE" "$BATCH" "$IMAGES" <<'PYEOF'
import sys, time, torch, timm
dev, batch, images = torch.device(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
m = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(3, 4)).eval().to(dev)
m = m.to(memory_format=torch.channels_last)
x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
    for _ in range(3):
        m(x)
    sync()
    n, t0 = 0, time.perf_counter()
    while n < max(images, 4 * batch):
        outs = [o.to(torch.float16) for o in m(x)]
        n += batch
    sync()
print(f"{n / (time.perf_counter() - t0):.1f}")
PYEOF
)
echo "bare: $BARE img/s"

run_featdump() {  # $1: decode (cpu|gpu); prints featdump's own img/s (the run, after the model is built)
  "$PY" - "$WORK" "$DEVICE" "$BATCH" "$1" <<'PYEOF'
import sys, featdump
work, device, batch, decode = sys.argv[1:]
extra = {"decode": "gpu"} if decode == "gpu" else {}
s = featdump.extract("resnet50", f"{work}/images", f"{work}/out.h5", pretrained=False, out_indices=[3, 4],
                     dtype="float16", precision="bf16", device=device, batch_size=int(batch), overwrite=True, **extra)
print(f"{s.images_per_second:.1f}")
PYEOF
}

echo "== featdump, CPU decoding"
CPU_RATE=$(run_featdump cpu | tail -1)
echo "featdump (CPU decoding): $CPU_RATE img/s"
GPU_RATE=skipped
if [ "$DEVICE" != "cpu" ]; then
  echo "== featdump, --decode gpu"
  GPU_RATE=$(run_featdump gpu | tail -1)
  echo "featdump (--decode gpu): $GPU_RATE img/s"
fi

"$PY" - "$BARE" "$CPU_RATE" "$GPU_RATE" "$DEVICE" "$IMAGES" <<'PYEOF'
import sys
bare, cpu, gpu, dev, n = sys.argv[1:]
bare = float(bare)
def ratio(x):
    return "-" if x == "skipped" else f"{float(x) / bare:.2f}x"
print()
print(f"| resnet50 layer3+layer4, float16, bf16 autocast, {n} JPEGs, {dev} | img/s | x bare |")
print("|---|---:|---:|")
print(f"| bare forward (pre-decoded tensors) | {bare:.1f} | 1.00x |")
print(f"| featdump, CPU decoding | {cpu} | {ratio(cpu)} |")
print(f"| featdump, --decode gpu | {gpu} | {ratio(gpu)} |")
PYEOF
