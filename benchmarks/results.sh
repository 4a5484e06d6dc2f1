#!/usr/bin/env bash
# Reruns the rows of docs/results.md on this machine's CPU: each training writes its run folder (config.yaml,
# metrics.csv, report.md, best.pt) under benchmarks/results/<dataset>/, then the CPU batch-1 latencies at the
# training size. A row whose run folder already holds report.md is skipped (delete it to rerun); two instances
# side by side share the rows (benchmarks/row.sh).
# Usage: benchmarks/results.sh [DATA_DIR]   (default ../shared/data; PY=... to override the interpreter,
# THREADS=N threads per training, default 2; two trainings side by side used THREADS=1 each; LATENCY=0 skips the
# latency rows; TRAIN=0 skips the trainings)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data}
MT=$DATA/magnetic-tile
NEU=$DATA/neu-seg
export OMP_NUM_THREADS=${THREADS:-2}

source benchmarks/row.sh  # train_row OUT NAME ARGS...: one training
[[ ${TRAIN:-1} == 1 ]] || train_row() { :; }  # TRAIN=0: the latency rows and the plot only

R=benchmarks/results
MT_SPLIT=(--data "$MT" --split-file "$MT/split-70-15-15.json" --batch-size 16)

# What `defectseg train --data DIR` gives with nothing else but the reporting split: cheapmix-m, the whole tile
# resized, 30 epochs, BCE+Dice, the split's own 29 % defective draws (above the 0.25 floor), validation every
# epoch, val-f1 threshold. Row `defaults` ran when 256 was the default size (pinned here so a rerun reproduces it);
# `defaults-size128` at 128, the default since (--size 128 kept explicit for the same reason).
# cheapmix-m was the default model then: pinned (with --model) so a rerun reproduces these rows.
train_row $R/magnetic-tile defaults --data "$MT" --split-file "$MT/split-70-15-15.json" --size 256 --model cheapmix-m
train_row $R/magnetic-tile defaults-size128 --data "$MT" --split-file "$MT/split-70-15-15.json" --size 128 \
    --model cheapmix-m

# Magnetic tile: the default model on the whole tile resized to 128x128 (about half scale), 40 epochs.
train_row $R/magnetic-tile long-resize128 "${MT_SPLIT[@]}" --model cheapmix-m --lr 0.01 --epochs 40 --size 128 \
    --set data.defective_share=0.5 --set train.eval_every=5 --set infer.threshold_from=val-f1 \
    --set train.monitor=pixel_ap
# The same, 80 epochs; at 192x192 (about two-thirds scale), 40 epochs; with global context, 40 epochs.
train_row $R/magnetic-tile long80-resize128 "${MT_SPLIT[@]}" --model cheapmix-m --lr 0.01 --epochs 80 --size 128 \
    --set data.defective_share=0.5 --set train.eval_every=10
train_row $R/magnetic-tile long-resize192 "${MT_SPLIT[@]}" --model cheapmix-m --lr 0.01 --epochs 40 --size 192 \
    --set data.defective_share=0.5 --set train.eval_every=5
train_row $R/magnetic-tile ctx-resize128 "${MT_SPLIT[@]}" --model cheapmix-m --set model.options.context=true --lr 0.01 \
    --epochs 40 --size 128 --set data.defective_share=0.5 --set train.eval_every=5
# The CheapNet paper's recipe (BCE, Adam 0.01, step decay x0.1 at half and three quarters, no augmentation, no
# oversampling) with the paper's CheapNet-M, on our budget: 128x128 and 40 epochs instead of 512x512 and 120.
train_row $R/magnetic-tile paper-cheapnet-m "${MT_SPLIT[@]}" --preset cheapnet-paper --model cheapnet-m --size 128 \
    --epochs 40 --set "train.milestones=[20,30]" --set train.eval_every=5
# The Mobile-UNet paper's recipe (RGB, cross-entropy with median-frequency weights, Adam 1e-3), 128x128, 40 epochs.
train_row $R/magnetic-tile paper-mobile-unet "${MT_SPLIT[@]}" --preset mobile-unet-paper --size 128 --epochs 40 \
    --set train.eval_every=5
# Two more seeds of long80-resize128 (seed 0 is that row).
for seed in 1 2; do
  train_row $R/magnetic-tile long80-resize128-seed$seed "${MT_SPLIT[@]}" --model cheapmix-m --lr 0.01 --epochs 80 \
      --size 128 --set data.defective_share=0.5 --set train.eval_every=10 --set train.seed=$seed
done
# Two more seeds of long-resize128 (seed 0 is that row).
for seed in 1 2; do
  train_row $R/magnetic-tile long-resize128-seed$seed "${MT_SPLIT[@]}" --model cheapmix-m --lr 0.01 --epochs 40 \
      --size 128 --set data.defective_share=0.5 --set train.eval_every=10 --set train.seed=$seed
done
# The same protocol with unet-small (1.94 M parameters), 15 epochs.
train_row $R/magnetic-tile long-unet-resize128 "${MT_SPLIT[@]}" --model unet-small --lr 0.003 --epochs 15 --size 128 \
    --set data.defective_share=0.5 --set train.eval_every=5 --set infer.threshold_from=val-f1 \
    --set train.monitor=pixel_ap
# Native-resolution 128x128 crops (defect-centred 80 %, BCE pos_weight 20), 12 epochs.
train_row $R/magnetic-tile mix-pw20 "${MT_SPLIT[@]}" --model cheapmix-m --lr 0.01 --epochs 12 \
    --set data.crop=128 --set data.defective_share=0.6 --set data.defect_crops=0.8 \
    --set train.loss_options.pos_weight=20 --set infer.threshold_from=val-f1 --set train.eval_every=3 \
    --set train.monitor=miou --set train.prior_init=false  # as run before those defaults existed
# The cascade: a classifier gate on every training tile (its image label), in front of (a) the plain 80-epoch
# segmenters (seeds 1 and 2: seed 0's best.pt was not kept) and (b) a segmenter trained on defective tiles only
# (--preset cascade); `evaluate --gate` scores them on the test split through the predict path, to compare with the
# plain segmenters' rows.
train_row $R/magnetic-tile gate-mnv2 "${MT_SPLIT[@]}" --task classify --model classifier-mobilenetv2 --lr 0.001 \
    --epochs 20 --size 128 --set data.defective_share=0.5 --set train.eval_every=5
train_row $R/magnetic-tile cascade-seg "${MT_SPLIT[@]}" --preset cascade --model cheapmix-m --lr 0.01 --epochs 80 \
    --size 128 --set train.eval_every=10
for seg in long80-resize128-seed1 long80-resize128-seed2 cascade-seg; do
  json=$R/magnetic-tile/gated-$seg.json  # once both trainings are done (the other instance may still be on one)
  if [[ ! -f $json && -f $R/magnetic-tile/gate-mnv2/report.md && -f $R/magnetic-tile/$seg/report.md ]]; then
    "$PY" -m defectseg.cli evaluate --checkpoint $R/magnetic-tile/$seg/best.pt --device cpu \
        --gate $R/magnetic-tile/gate-mnv2/best.pt --json "$json" > "${json%.json}.log" 2>&1
  fi
done
# unet-small with BCE, Dice and BCE+Dice (the tutorial's comparison) and an encoder U-Net (MobileNetV1 encoder, no
# pretraining) with BCE+Dice: Adam 1e-3 (3e-3 left unet-small on the plateau), 15 epochs: about the wall time of
# 40 cheapmix-m epochs. float32 (train.amp=false), as every other row was trained before bf16 became the CPU default.
for loss in bce dice bce-dice; do
  train_row $R/magnetic-tile unet-$loss "${MT_SPLIT[@]}" --model unet-small --loss $loss --lr 0.001 --epochs 15 \
      --size 128 --set data.defective_share=0.5 --set train.eval_every=5 --set train.amp=false
done
train_row $R/magnetic-tile unet-mobilenetv1 "${MT_SPLIT[@]}" --model unet-mobilenetv1 --lr 0.001 --epochs 15 \
    --size 128 --set data.defective_share=0.5 --set train.eval_every=5 --set train.amp=false  # float32 like unet-*
# NEU-Seg (its own split): the default model with cross-entropy over the three classes, 6 epochs.
train_row $R/neu-seg neu-mix --data "$NEU" --model cheapmix-m --size 192 --loss ce --lr 0.01 --epochs 6 --batch-size 16 \
    --set train.eval_every=2 --set train.monitor=miou --set infer.threshold_from=fixed --set train.prior_init=false
# NEU-Seg with every default but the size (cheapmix-m, bce-dice, val-f1 threshold), 6 epochs.
train_row $R/neu-seg neu-default --data "$NEU" --model cheapmix-m --size 192 --epochs 6 --batch-size 16 --set train.eval_every=2
# The same at 128x128 (the size that did better on magnetic tile's pure defaults).
train_row $R/neu-seg neu-default-size128 --data "$NEU" --model cheapmix-m --size 128 --epochs 6 --batch-size 16 --set train.eval_every=2

# NEU-Seg with the other models of the magnetic-tile table at 192x192 (bf16 on a CPU with native bf16, the default
# since 2026-11-30; the two rows above ran in float32): the paper recipes for 6 epochs like the rows above, then
# unet-small and the encoder U-Net with our default loss (BCE+Dice) at Adam 1e-3 (3e-3 left unet-small on the
# plateau on magnetic tile) for 3 epochs (what the session's CPU time allowed).
train_row $R/neu-seg neu-paper-cheapnet-m --data "$NEU" --preset cheapnet-paper --model cheapnet-m --size 192 --epochs 6 \
    --batch-size 16 --set "train.milestones=[3,5]" --set train.eval_every=2
train_row $R/neu-seg neu-paper-mobile-unet --data "$NEU" --preset mobile-unet-paper --size 192 --epochs 6 \
    --batch-size 16 --set train.eval_every=2
for model in unet-small unet-mobilenetv1; do
  train_row $R/neu-seg neu-$model --data "$NEU" --model $model --lr 0.001 --size 192 --epochs 3 --batch-size 16 \
      --set train.eval_every=3
done

[[ ${LATENCY:-1} == 1 ]] || exit 0  # LATENCY=0: trainings only
# CPU batch-1 latency at the training sizes (2 threads, eager PyTorch as in the plot's label; docs/benchmarks.md has
# every backend), then the plot of defect IoU against it.
for size in 128 192 256; do
  "$PY" -m defectseg.cli benchmark --models cheapmix-m,unet-small,unet-mobilenetv1,cheapnet-m --size $size --batch 1 \
      --device cpu --backend torch --threads 2 --repeats 30 --max-seconds 10 --quiet --overwrite --out "$R/latency-$size.md"
done
for size in 128 192; do
  "$PY" -m defectseg.cli benchmark --models mobile-unet --channels 3 --size $size --batch 1 --device cpu \
      --backend torch --threads 2 --repeats 30 --max-seconds 10 --quiet --overwrite --out "$R/latency-$size-rgb.md"
done
"$PY" benchmarks/results_plot.py docs/results.png
