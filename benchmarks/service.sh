#!/usr/bin/env bash
# The load figures of docs/service.md: `defectseg serve` with CheapNet-M at 512x512 (random weights, threshold 0.9,
# as benchmarks/pipeline.py) on loopback, then benchmarks/load.py with 1, 4 and 8 concurrent clients for SECONDS
# each (one 512x512 PNG per request), reporting requests/s, p50/p99, errors, the mean network batch and the server's
# resident memory. Usage: benchmarks/service.sh [OUT_FILE] (THREADS=N for the network, default 2; SECONDS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/service-512.md}
SECS=${SECONDS_PER_RUN:-20}
TMP=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$TMP"' EXIT
"$PY" - "$TMP/model.pt" <<'PY'
import sys
sys.path.insert(0, "benchmarks")
from pathlib import Path
from pipeline import checkpoint
checkpoint(Path(sys.argv[1]), "cheapnet-m", 512)
PY
"$PY" -m defectseg.cli serve --checkpoint "$TMP/model.pt" --port 8765 --threads "${THREADS:-2}" --max-batch 8 \
    > "$TMP/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:8765/health > /dev/null && break; sleep 0.2; done
{
  echo "# defectseg serve under load: CheapNet-M, 512x512 PNG per request, loopback"
  echo
  echo "- command: \`benchmarks/service.sh\` ($(date -Is)); health: \`$(curl -s http://127.0.0.1:8765/health)\`"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo '```'
  for clients in 1 4 8; do
    "$PY" benchmarks/load.py --url http://127.0.0.1:8765 --clients "$clients" --seconds "$SECS" --size 512 --pid $SERVER
  done
  echo '```'
  echo
  echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT"
