#!/usr/bin/env bash
# The transfer-learning rows of docs/results.md: unet-lite0 (EfficientNet-Lite0 pretrained on ImageNet) with its
# recipe (`--preset transfer`; the default model since) on magnetic tile (the reporting split, three seeds, with
# and without the image head), NEU-Seg and the DAGM samples, and the old default (cheapmix-m) beside it there. Run
# folders under benchmarks/results/<dataset>/ (a row whose report.md exists is skipped; two instances side by side
# share the rows: benchmarks/row.sh).
# transfer-head-seedN trained the image head as shipped, but their report.md was evaluated with the probabilities
# multiplied (commit d8bc489); *.capped.txt re-chose the threshold on the validation split and evaluated the test
# split as shipped (capped): `python benchmarks/probes/calibrate_and_test.py RUN/best.pt val-f1`.
# transfer-headd-seed0 ran a variant with the head on detached features (commit a8d5005), not shipped.
# Usage: benchmarks/transfer.sh [DATA_DIR]   (default ../shared/data; PY=... for the interpreter; THREADS=N per
# training, default 2: transfer-seed0 ran so, the other rows as two or three one-thread trainings side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data}
MT=$DATA/magnetic-tile
export OMP_NUM_THREADS=${THREADS:-2}
source benchmarks/row.sh
R=benchmarks/results
MT_SPLIT=(--data "$MT" --split-file "$MT/split-70-15-15.json")

for seed in 0 1 2; do
  train_row $R/magnetic-tile transfer-seed$seed "${MT_SPLIT[@]}" --preset transfer --seed $seed
  train_row $R/magnetic-tile transfer-head-seed$seed "${MT_SPLIT[@]}" --preset transfer --seed $seed \
      --set model.options.image_head=true
done
# The image head with a tenth of its gradient into the encoder (the recipe since 2026-12-06; the rows above ran
# before it, with the head off or with all of its gradient), and the decision-network variant (commit 8b5f1ce's
# working tree: model.options.decision=64, image_grad=0; not shipped).
for seed in 0 1 2; do
  train_row $R/magnetic-tile transfer-headg01-seed$seed "${MT_SPLIT[@]}" --preset transfer --seed $seed \
      --set model.options.image_head=true --set model.options.image_grad=0.1
done
OMP_NUM_THREADS=2 train_row $R/magnetic-tile defaults-seed0-alone "${MT_SPLIT[@]}" --seed 0   # alone on an idle box
train_row $R/neu-seg transfer-headg01 --data "$DATA/neu-seg"
train_row $R/dagm-samples transfer-headg01 --data "$DATA/dagm-samples" --split-file $R/dagm-samples/transfer/split.json
train_row $R/neu-seg transfer --data "$DATA/neu-seg" --preset transfer
train_row $R/dagm-samples transfer --data "$DATA/dagm-samples" --preset transfer
train_row $R/dagm-samples defaults --data "$DATA/dagm-samples" --model cheapmix-m
