#!/usr/bin/env bash
# The training-speed table of docs/results.md: the trainer's step (`defectseg benchmark --train`: on-device
# augmentation, BCE+Dice, backward, Adam) for CheapNet-M and CheapMix-M, batch 16, in every memory layout and dtype
# the trainer can use on the CPU: NCHW float32 (the path before the speed work), channels_last float32, and
# channels_last with bf16 autocast (`train.amp` where the CPU runs bf16 natively: runtime.cpu_bf16). Run back to
# back on an otherwise idle machine so the ratios hold; each file is headed by its exact command and the load.
# Usage: benchmarks/train_speed.sh [OUT_DIR]   (default benchmarks/results/train-speed; THREADS=N, default 2;
# SIZES="128 256")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/train-speed}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
export OMP_NUM_THREADS=$THREADS
DTYPES=fp32
if "$PY" -c "import sys; from defectseg.runtime import cpu_bf16; sys.exit(0 if cpu_bf16() else 1)"; then
  DTYPES=fp32,bf16  # bf16 rows only where the trainer would use it
fi
for size in ${SIZES:-128 256}; do
  for layout in nchw channels-last; do
    flag=(); [[ $layout == channels-last ]] && flag=(--channels-last)
    dtypes=$DTYPES; [[ $layout == nchw ]] && dtypes=fp32
    "$PY" -m defectseg.cli benchmark --train --models cheapnet-m,cheapmix-m --size "$size" --batch 16 --device cpu \
        --threads "$THREADS" --dtype "$dtypes" "${flag[@]}" --repeats 6 --max-seconds 30 --quiet \
        --overwrite --out "$OUT/train-$size-$layout.md" > /dev/null
    echo "== $size $layout ($(uptime))"
    grep '^| cheap' "$OUT/train-$size-$layout.md" | cut -d'|' -f2,5,7,13,15  # model, dtype, channels_last, median ms, img/s
  done
done
