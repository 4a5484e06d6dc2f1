#!/usr/bin/env bash
# The few-label curve of docs/results.md (magnetic tile, split-70-15-15, the default model at 128x128 on the CPU):
# trainings with 0 real defective images (good parts + synthetic defects), and later 5/10/20/50/all, with and
# without synthetic defects and copy-paste; three seeds (which also choose the k real images) for 0 and 10. Each run
# folder lands in benchmarks/results/magnetic-tile/; finished rows are skipped, and two instances side by side
# share the rows (benchmarks/row.sh): `benchmarks/fewlabel.sh & benchmarks/fewlabel.sh` uses both cores of a 2-core box.
# Usage: benchmarks/fewlabel.sh [DATA_DIR] (THREADS=N per training, default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data}
MT=$DATA/magnetic-tile
OUT=benchmarks/results/magnetic-tile
export OMP_NUM_THREADS=${THREADS:-1}
COMMON=(--data "$MT" --split-file "$MT/split-70-15-15.json" --batch-size 16 --model cheapmix-m --lr 0.01 --size 128)

source benchmarks/row.sh
row() { train_row "$OUT" "$1" "${COMMON[@]}" "${@:2}"; }  # row NAME ARGS...

# 0 real defective images: good parts with a synthetic defect on half of them; threshold on good validation images.
row fewlabel-0-synth --defect-free-only --synthetic-defects 0.5 --epochs 30 --set train.eval_every=5
# 10 real defective images (seeded choice), drawn a quarter of the time; with and without made defects.
row fewlabel-10-synth --set data.defective_images=10 --set data.defective_share=0.25 --synthetic-defects 0.5 \
    --copy-paste 0.5 --epochs 30 --set train.eval_every=5
row fewlabel-10 --set data.defective_images=10 --set data.defective_share=0.25 --epochs 30 --set train.eval_every=5
# All real defective images (drawn half the time), with and without made defects.
row fewlabel-all-synth --set data.defective_share=0.5 --synthetic-defects 0.5 --copy-paste 0.5 --epochs 30 \
    --set train.eval_every=5
row fewlabel-all --set data.defective_share=0.5 --epochs 30 --set train.eval_every=5

# Seeds 1 and 2 of the 0 and 10 rows (the seed also draws which 10 real images are kept).
for seed in 1 2; do
  row fewlabel-0-synth-seed$seed --defect-free-only --synthetic-defects 0.5 --epochs 30 --set train.eval_every=5 \
      --set train.seed=$seed
  row fewlabel-10-synth-seed$seed --set data.defective_images=10 --set data.defective_share=0.25 \
      --synthetic-defects 0.5 --copy-paste 0.5 --epochs 30 --set train.eval_every=5 --set train.seed=$seed
  row fewlabel-10-seed$seed --set data.defective_images=10 --set data.defective_share=0.25 --epochs 30 \
      --set train.eval_every=5 --set train.seed=$seed
done
# 5, 20 and 50 real defective images, with and without made defects (0 without made defects has no defect at all).
for k in 5 20 50; do
  row fewlabel-$k-synth --set data.defective_images=$k --set data.defective_share=0.25 --synthetic-defects 0.5 \
      --copy-paste 0.5 --epochs 30 --set train.eval_every=5
  row fewlabel-$k --set data.defective_images=$k --set data.defective_share=0.25 --epochs 30 --set train.eval_every=5
done

# The pretrained models (docs/results.md "with pretrained features"): unet-lite0 with its recipe (192², 900 steps,
# the image head) on k real defective tiles (a quarter of the draws), all 274 being the default run; each then
# behind the good-parts model as the gate (`evaluate --gate`: patchcore-lite0, fitted by benchmarks/anomaly.sh,
# calls the tile OK or NG, unet-lite0 draws the masks of the tiles it calls NG).
LITE=(--data "$MT" --split-file "$MT/split-70-15-15.json")
for k in 5 10 20 50 all; do
  name=fewlabel-lite0-$k
  if [[ $k == all ]]; then train_row "$OUT" $name "${LITE[@]}"; else
    train_row "$OUT" $name "${LITE[@]}" --set data.defective_images=$k; fi
  gate=$OUT/anomaly-patchcore/best.pt
  if [[ -f $OUT/$name/best.pt && -f $gate && ! -f $OUT/$name.gated.json ]]; then
    "$PY" -m defectseg.cli evaluate --checkpoint $OUT/$name/best.pt --gate $gate --json $OUT/$name.gated.json \
        > $OUT/$name.gated.log 2>&1 || echo "== $name: the gated evaluation failed ($OUT/$name.gated.log)"
  fi
done
