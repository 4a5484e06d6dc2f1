#!/usr/bin/env bash
# Batch-1 latency of unet-lite0 beside cheapmix-m on two CPU threads at 128, 192 and 256 with the default backend
# (`auto`: the exported graph on ONNX Runtime), and whether static int8 pays for unet-lite0 (its time is in 1x1
# convolutions). Writes benchmarks/results/latency-lite0-<size>.md and int8-lite0-256.txt. Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for size in 128 192 256; do
  "$PY" -m defectseg.cli benchmark --models unet-lite0,cheapmix-m --size "$size" --device cpu --batch 1 \
      --backend auto --threads 2 --repeats 50 -q --overwrite --out "benchmarks/results/latency-lite0-$size.md" > /dev/null
done
"$PY" benchmarks/probes/int8.py unet-lite0 256 2 2>&1 | grep -v "^WARNING" > benchmarks/results/int8-lite0-256.txt
