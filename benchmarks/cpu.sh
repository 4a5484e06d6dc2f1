#!/usr/bin/env bash
# The CPU table of docs/benchmarks.md: batch-1 latency and batch-8 throughput, fp32, torch eager vs channels_last
# vs onnxruntime, plus the machine's two ceilings (memory bandwidth, matmul rate).
# Usage: benchmarks/cpu.sh [OUT_DIR]   (default benchmarks/results/cpu; PY=python to override the interpreter,
# THREADS=N to pin torch's and ORT's intra-op threads; default: torch's own setting)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/cpu}
mkdir -p "$OUT"
THREAD_ARGS=()
if [[ -n "${THREADS:-}" ]]; then THREAD_ARGS=(--threads "$THREADS"); fi
COMMON=(--device cpu --dtype fp32 --format md --quiet "${THREAD_ARGS[@]}")
VARIANTS=("eager:" "channels-last:--channels-last" "onnxruntime:--backend onnxruntime")

bench() {  # bench NAME ARGS...: three variants of one table, each to its own file
  local name=$1; shift
  for v in "${VARIANTS[@]}"; do
    local tag=${v%%:*} extra=${v#*:}
    echo "== $name $tag ($(uptime))" | tee -a "$OUT/load.log"
    # shellcheck disable=SC2086
    "$PY" -m defectseg.cli benchmark "$@" "${COMMON[@]}" $extra --out "$OUT/$name-$tag.md" > /dev/null
    tail -n +2 "$OUT/$name-$tag.md" | grep '^|' | tail -n +3
  done
}

echo "start: $(uptime)" | tee "$OUT/load.log"
"$PY" benchmarks/cpu_ceilings.py "${THREAD_ARGS[@]}" | tee "$OUT/ceilings.txt"
bench cheapnet-sm --models cheapnet-s,cheapnet-m --size 512 --channels 1 --batch 1,8 --repeats 30 --max-seconds 20
bench unet-small --models unet-small --size 512 --channels 1 --batch 1,8 --repeats 30 --max-seconds 20
bench mobile-unet --models mobile-unet --size 256 --channels 3 --batch 1,8 --repeats 30 --max-seconds 20
# CheapNet-L moves ~21 GiB per 512x512 image in eager PyTorch: batch 1 only, few repetitions.
bench cheapnet-l --models cheapnet-l --size 512 --channels 1 --batch 1 --warmup 1 --repeats 5 --max-seconds 60
echo "end: $(uptime)" | tee -a "$OUT/load.log"
