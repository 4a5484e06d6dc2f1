#!/usr/bin/env bash
# The CPU table of docs/benchmarks.md: per model, every backend in one `defectseg benchmark` call (so their ratios
# are measured under the same load): eager PyTorch, PyTorch after the inference rewrites (torch-fused), ONNX Runtime
# on the plain and on the rewritten graph, OpenVINO on the rewritten graph (if installed: `pip install openvino`);
# batch-1 latency and batch-8 throughput, fp32; then the predict pipeline end to end against the network alone,
# and the machine's two ceilings (memory bandwidth, matmul rate).
# Usage: benchmarks/cpu.sh [OUT_DIR]   (default benchmarks/results/cpu; PY=python to override the interpreter,
# THREADS=N intra-op threads for torch, ORT and OpenVINO, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/cpu}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
export OMP_NUM_THREADS=$THREADS
BACKENDS=torch,torch-fused,onnxruntime,onnxruntime-fused,openvino-fused
COMMON=(--device cpu --dtype fp32 --format md --quiet --threads "$THREADS" --backend "$BACKENDS")

bench() {  # bench NAME ARGS...: one table, every backend
  local name=$1; shift
  echo "== $name ($(uptime))" | tee -a "$OUT/load.log"
  "$PY" -m defectseg.cli benchmark "$@" "${COMMON[@]}" --out "$OUT/$name.md" --overwrite > /dev/null
  grep '^|' "$OUT/$name.md" | tail -n +3
}

echo "start: $(uptime)" | tee "$OUT/load.log"
"$PY" benchmarks/cpu_ceilings.py --threads "$THREADS" | tee "$OUT/ceilings.txt"
bench cheapnet-sm --models cheapnet-s,cheapnet-m --size 512 --channels 1 --batch 1,8 --repeats 30 --max-seconds 10
bench cheapmix-m --models cheapmix-m --size 512 --channels 1 --batch 1,8 --repeats 30 --max-seconds 10
bench mobile-unet --models mobile-unet --size 256 --channels 3 --batch 1,8 --repeats 30 --max-seconds 10
bench unet-small --models unet-small --size 512 --channels 1 --batch 1 --repeats 10 --max-seconds 10
echo "== pipeline ($(uptime))" | tee -a "$OUT/load.log"
"$PY" benchmarks/pipeline.py --model cheapnet-m --size 512 --images 48 --batch 1,8 --threads "$THREADS" \
    --out "$OUT/pipeline-cheapnet-m.md" | grep '^| [0-9]'
echo "end: $(uptime)" | tee -a "$OUT/load.log"
