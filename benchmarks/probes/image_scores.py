"""Image AUROC of statistics of a finished run's probability maps, on its validation and test splits.

    python benchmarks/probes/image_scores.py RUN/best.pt
The maximum probability (the image score everywhere), box-filtered maxima (5-41 px), the mean of the top 10/100/1000
pixels, the sum and the area at 0.5: whether any ranks images better than the maximum (docs/results.md, the OK/NG
score). The maps come through the predict path (`evaluate.predictions`).
"""

import sys

import cv2
import numpy as np
import torch

from defectseg import checkpoint, data, evaluate
from defectseg.localize import defect_probability
from defectseg.metrics import auroc_score  # the Mann-Whitney AUROC evaluation reports

ck = checkpoint.load_checkpoint(sys.argv[1])
model, cfg = checkpoint.model_from_checkpoint(ck)
spec = data.load_dataset(cfg.data.root)
split = data.load_split(cfg.data.split_file)
train = data.select(spec, split["train"])
out = {}
for part in ("val", "test"):
    es = evaluate.eval_set(cfg, spec, data.select(spec, split[part]), train, True)
    rows = []
    for r, gt in evaluate.predictions(model, es, cfg, torch.device("cpu"), ck["num_classes"]):
        p = defect_probability(r.prob).astype(np.float32)
        f = {"max": p.max(), **{f"box{k}": cv2.blur(p, (k, k)).max() for k in (5, 11, 21, 41)}}
        top = np.sort(p.ravel())[::-1]
        f.update({f"top{k}": top[:k].mean() for k in (10, 100, 1000)})
        f.update({"sum": p.sum(), "area.5": (p >= 0.5).sum()})
        rows.append((bool(data.io.defect_pixels(gt).any()), f))
    out[part] = rows
for key in out["test"][0][1]:
    v, t = (auroc_score([f[key] for _, f in out[p]], [y for y, _ in out[p]]) for p in ("val", "test"))
    print(f"{key:8s} val {v:.3f} test {t:.3f}")
