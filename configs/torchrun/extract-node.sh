#!/bin/bash
# featdump on one multi-GPU node: torchrun starts one featdump per GPU; process RANK of WORLD_SIZE
# takes block RANK of the sorted image list, runs on cuda:LOCAL_RANK and writes
# OUT.shard-0000R-of-0000W.h5; then the shards are merged into OUT.h5 (a virtual file).
# No process group is formed: torchrun only starts and numbers the processes.
#
#   configs/torchrun/extract-node.sh MODEL IMAGES OUT.h5 [more `featdump extract` options]
#   NPROC=4 configs/torchrun/extract-node.sh resnet50 /data/photos /scratch/feats/feats.h5 --dtype float16
#
# Run it again after an interruption: it resumes the shards (a finished shard is a no-op).
# Inside a Slurm allocation (one task, all GPUs of the node), call it from an sbatch script.
#
# Environment:
#   NPROC      processes [number of GPUs, or 2 without any]
#   TORCHRUN   the launcher [torchrun on PATH]; it must belong to the Python that has featdump
#   FEATDUMP   the featdump command for the merge [featdump on PATH]
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: extract-node.sh MODEL IMAGES OUT.h5 [featdump extract options]" >&2
    exit 2
fi
model=$1 images=$2 out=$3
shift 3
read -r -a torchrun <<<"${TORCHRUN:-torchrun}"
read -r -a featdump <<<"${FEATDUMP:-featdump}"
if [ -z "${NPROC:-}" ]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "${NPROC:-0}" -gt 0 ] || NPROC=2
fi

base=$(basename -- "$out")
if [ "${base%.*}" != "$base" ] && [ -n "${base%.*}" ]; then stem=${out%.*} ext=.${out##*.}; else stem=$out ext=.h5; fi
shards=()
for ((i = 0; i < NPROC; i++)); do
    shards+=("$(printf '%s.shard-%05d-of-%05d%s' "$stem" "$i" "$NPROC" "$ext")")
done

mkdir -p -- "$(dirname -- "$out")"
# --resume: start each shard, or continue it when this is run again; finished shards are left alone.
"${torchrun[@]}" --standalone --nproc_per_node="$NPROC" -m featdump \
    extract "$model" "$images" -o "$out" --resume "$@"
if [ "$NPROC" -gt 1 ]; then
    "${featdump[@]}" merge "${shards[@]}" -o "$out" --overwrite
fi
