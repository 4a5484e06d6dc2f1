#!/usr/bin/env bash
# The good-parts rows of docs/results.md: patchcore-lite0 (`--task anomaly`) fitted on the defect-free training
# tiles of magnetic tile (the reporting split; the defective training tiles are left out), with its defaults and on
# native pixels (crop mode), the probe that rebuilds issue 26's quick trial (the normalisation and border variants),
# then the default checkpoint's batch-1 latency at 256² on two threads with the default backend
# (benchmarks/probes/net_latency.py: the bank included, which `defectseg benchmark`'s default-built model lacks).
# Run folders under benchmarks/results/magnetic-tile/ (a row whose report.md exists is skipped: benchmarks/row.sh).
# The rows measured before the normalisation and zero_pad fixes (bank sizes, principal components, 320², sigma,
# plain distances, bilinear resizes) were run by this script's earlier version (git history, 2026-12-06 morning).
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
train_row $R anomaly-patchcore-native-zp "${MT_SPLIT[@]}" --task anomaly --set data.crop=256
"$PY" benchmarks/probes/patchcore_trial.py "$DATA" 60000 | tee $R/anomaly-patchcore-trial.txt
"$PY" benchmarks/probes/patchcore_trial.py "$DATA" g16384 gray-lite | tee $R/anomaly-patchcore-trial-greedy.txt
"$PY" benchmarks/probes/patchcore_trial.py "$DATA" g16384 gray-lite-edge | tee $R/anomaly-patchcore-trial-edge.txt
"$PY" benchmarks/probes/patchcore_scores.py $R/anomaly-patchcore/best.pt | tee $R/anomaly-patchcore.scores.txt
"$PY" benchmarks/probes/net_latency.py $R/anomaly-patchcore/best.pt 256 2 | tee $R/anomaly-patchcore.latency.txt
