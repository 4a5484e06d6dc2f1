#!/usr/bin/env bash
# The good-parts rows of docs/results.md: patchcore-lite0 (`--task anomaly`) fitted on the defect-free training
# tiles of magnetic tile (the reporting split; the defective training tiles are left out), with its defaults and
# with a larger bank / principal-component variants, then each checkpoint's batch-1 latency at 256² on two threads
# with the default backend (benchmarks/probes/net_latency.py: the bank included, which `defectseg benchmark`'s
# default-built model lacks). Run folders under benchmarks/results/magnetic-tile/ (a row whose report.md exists is
# skipped: benchmarks/row.sh).
# Usage: benchmarks/anomaly.sh [DATA_DIR]   (default ../shared/data; PY=... for the interpreter; THREADS=N per fit)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data}
MT=$DATA/magnetic-tile
export OMP_NUM_THREADS=${THREADS:-2}
source benchmarks/row.sh
R=benchmarks/results/magnetic-tile
MT_SPLIT=(--data "$MT" --split-file "$MT/split-70-15-15.json")

train_row $R anomaly-patchcore "${MT_SPLIT[@]}" --task anomaly
train_row $R anomaly-patchcore-bank40k "${MT_SPLIT[@]}" --task anomaly --set model.options.bank_size=40000
train_row $R anomaly-patchcore-pca64-bank40k "${MT_SPLIT[@]}" --task anomaly --set model.options.bank_size=40000 \
    --set model.options.dims=64
train_row $R anomaly-patchcore-320 "${MT_SPLIT[@]}" --task anomaly --size 320
train_row $R anomaly-patchcore-random "${MT_SPLIT[@]}" --task anomaly --set model.options.coreset=random
train_row $R anomaly-patchcore-random150k "${MT_SPLIT[@]}" --task anomaly --set model.options.coreset=random \
    --set model.options.bank_size=150000
"$PY" benchmarks/probes/patchcore_sigma.py $R/anomaly-patchcore/best.pt 0 2 8 | tee $R/anomaly-patchcore.sigma.txt
"$PY" benchmarks/probes/patchcore_sqrt.py $R/anomaly-patchcore/best.pt | tee $R/anomaly-patchcore.sqrt.txt
"$PY" benchmarks/probes/patchcore_bilinear.py "$DATA" | tee $R/anomaly-patchcore-bilinear.log
for run in anomaly-patchcore anomaly-patchcore-bank40k anomaly-patchcore-pca64-bank40k; do
  "$PY" benchmarks/probes/net_latency.py "$R/$run/best.pt" 256 2 | tee "$R/$run.latency.txt"
done
