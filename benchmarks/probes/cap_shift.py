"""The image head's cap, loosened: a finished image-head run's test defect IoU and image AUROC when the defect
probability is capped at sigmoid(image logit + shift) instead of the image probability, the threshold chosen for
each shift on the validation split (best pixel IoU on a 0.05 grid, masks at half resolution).

    python benchmarks/probes/cap_shift.py RUN/best.pt
shift 0 is the shipped cap; shift 100 no cap (the segmentation alone, the image score the smaller of the maximum
probability and the head's). docs/results.md, the OK/NG score.
"""

import sys

import numpy as np
import torch
from scipy.special import expit

from defectseg import checkpoint, data, evaluate, predictor
from defectseg.metrics import auroc_score  # the Mann-Whitney AUROC evaluation reports

torch.set_num_threads(1)


HEAD = []
orig = predictor.probabilities


def uncapped(logits, image_head=False):
    HEAD.extend(logits[:, -1].mean((1, 2)).tolist())
    return orig(logits[:, :-1], False)


predictor.probabilities = uncapped
ck = checkpoint.load_checkpoint(sys.argv[1])
model, cfg = checkpoint.model_from_checkpoint(ck)
spec = data.load_dataset(cfg.data.root)
split = data.load_split(cfg.data.split_file)
train = data.select(spec, split["train"])
res = {}
for part in ("val", "test"):
    HEAD.clear()
    maps = []
    es = evaluate.eval_set(cfg, spec, data.select(spec, split[part]), train, True)
    for r, gt in evaluate.predictions(model, es, cfg, torch.device("cpu"), ck["num_classes"]):
        maps.append((r.prob.astype(np.float32)[::2, ::2], ((gt > 0) & (gt != 255))[::2, ::2], (gt != 255)[::2, ::2]))
    res[part] = (maps, np.array(HEAD))
T = np.linspace(0.05, 0.95, 19)


def iou(maps, heads, t, shift):
    i = u = 0
    for (p, g, v), h in zip(maps, heads):
        q = np.minimum(p, expit(h + shift))
        m = (q >= t) & v
        i += (m & g).sum()
        u += ((m | g) & v).sum()
    return i / u


for shift in (0, 1, 2, 3, 4, 6, 100):
    vm, vh = res["val"]
    tm, th = res["test"]
    best = max(T, key=lambda t: iou(vm, vh, t, shift))
    y = [g.any() for _, g, _ in tm]
    score = [min(p.max(), expit(h + shift)) for (p, _, _), h in zip(tm, th)]
    print(
        f"shift {shift}: thr {best:.2f} val IoU {iou(vm, vh, best, shift):.4f} "
        f"test IoU {iou(tm, th, best, shift):.4f} test AUROC {auroc_score(score, y):.4f}",
        flush=True,
    )
