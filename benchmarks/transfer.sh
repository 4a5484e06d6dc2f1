#!/usr/bin/env bash
# The transfer-learning rows of docs/results.md: unet-lite0 (EfficientNet-Lite0 pretrained on ImageNet) with
# `--preset transfer` on magnetic tile (three seeds, the reporting split; with and without the image head), NEU-Seg
# and the DAGM samples, the from-scratch ablation (model.options.pretrained=false) and the defaults beside it on the
# DAGM samples. Run folders under benchmarks/results/<dataset>/ (a row whose report.md exists is skipped; two
# instances side by side share the rows: benchmarks/row.sh).
# Usage: benchmarks/transfer.sh [DATA_DIR]   (default ../shared/data; PY=... for the interpreter; THREADS=N per
# training, default 2: the preset is meant to train in about 20 minutes on two cores; transfer-seed0 ran so, the
# other rows as two one-thread trainings side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data}
MT=$DATA/magnetic-tile
export OMP_NUM_THREADS=${THREADS:-2}
source benchmarks/row.sh
R=benchmarks/results
MT_SPLIT=(--data "$MT" --split-file "$MT/split-70-15-15.json")
HEAD=(--set model.options.image_head=true)

train_row $R/magnetic-tile transfer-seed0 "${MT_SPLIT[@]}" --preset transfer --seed 0
for seed in 0 1 2; do
  train_row $R/magnetic-tile transfer-head-seed$seed "${MT_SPLIT[@]}" --preset transfer --seed $seed "${HEAD[@]}"
  [[ $seed == 0 ]] || train_row $R/magnetic-tile transfer-seed$seed "${MT_SPLIT[@]}" --preset transfer --seed $seed
done
train_row $R/neu-seg transfer --data "$DATA/neu-seg" --preset transfer
train_row $R/dagm-samples transfer --data "$DATA/dagm-samples" --preset transfer
train_row $R/dagm-samples defaults --data "$DATA/dagm-samples"
train_row $R/magnetic-tile transfer-scratch-seed0 "${MT_SPLIT[@]}" --preset transfer --seed 0 \
    --set model.options.pretrained=false
