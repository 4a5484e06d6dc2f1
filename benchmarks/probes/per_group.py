"""Test defect IoU per group of a finished run's best.pt: the first folder of each sample key (magnetic tile:
MT_Blowhole, MT_Break, MT_Crack, MT_Fray, MT_Uneven, MT_Free), through the predict path at the stored threshold.

    python benchmarks/probes/per_group.py RUN/best.pt [split]     (split: test by default)
Prints, per group: images, defect pixels, pixel IoU over the group (intersection and union summed over its
images), and the share of its images called NG.
"""

import collections
import json
import sys

import numpy as np
import torch

from defectseg import checkpoint, data, evaluate

ck_path = sys.argv[1]
which = sys.argv[2] if len(sys.argv) > 2 else "test"
ck = checkpoint.load_checkpoint(ck_path)
model, cfg = checkpoint.model_from_checkpoint(ck)
spec = data.load_dataset(cfg.data.root)
split = data.load_split(cfg.data.split_file)
train = data.select(spec, split["train"])
samples = data.select(spec, split[which])
ev = evaluate.eval_set(cfg, spec, samples, train, False)
stats = collections.defaultdict(lambda: np.zeros(5, np.int64))  # images, gt px, inter, union, NG
for s, (r, gt) in zip(samples, evaluate.predictions(model, ev, cfg, torch.device("cpu"), ck["num_classes"])):
    group = s.key.split("/")[0]
    truth, pred = gt > 0, r.mask > 0
    stats[group] += [1, truth.sum(), (truth & pred).sum(), (truth | pred).sum(), r.verdict == "NG"]
print(f"threshold {cfg.infer.threshold:.4f}")
for g, (n, px, inter, union, ng) in sorted(stats.items()):
    iou = inter / union if union else float("nan")
    print(f"{g:14s} images {n:3d}  defect px {px:8d}  IoU {iou:.3f}  NG {ng / n:.2f}")
print(json.dumps({g: round(float(v[2] / v[3]), 4) if v[3] else None for g, v in stats.items()}))
