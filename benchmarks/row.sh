# Sourced by results.sh and fewlabel.sh. `train_row OUT NAME ARGS...` trains one row of a results table with
# `defectseg train ARGS... --out-dir OUT --name NAME`, its console log in OUT/NAME.log. A row whose report.md
# exists is skipped (delete the folder to rerun it), and so is a row another instance of the script is training
# (a lock file per row, released when the training ends or its shell dies): two instances side by side share the
# rows between them, which is how a 2-core box runs two one-thread trainings at once.
train_row() {
  local out=$1 name=$2; shift 2
  if [[ -f "$out/$name/report.md" ]]; then echo "== $name: done ($out/$name/report.md)"; return; fi
  mkdir -p "$out"
  exec 9>"$out/$name.lock"
  if ! flock -n 9; then echo "== $name: another instance is training it"; exec 9>&-; return; fi
  echo "== $name ($(date -Is), $(uptime))"
  "$PY" -m defectseg.cli train "$@" --out-dir "$out" --name "$name" --overwrite -q > "$out/$name.log" 2>&1
  tail -n 30 "$out/$name.log"
  exec 9>&-
}
