"""Test image AUROC, pixel AUROC, AUPRO and pixel AP of a fitted patchcore-lite0 scored by plain distances (the
square root of its squared ones) instead: does squaring explain part of the gap to issue 26's quick trial? The
bank is the checkpoint's; the calibration is set to center 37, spread 5 (about the square roots of the fitted
ones), which only keeps the sigmoid from saturating: AUROC, AUPRO and AP are rankings.

    python benchmarks/probes/patchcore_sqrt.py RUN/best.pt
"""

import sys

import torch

from defectseg import checkpoint, data, evaluate
from defectseg.models import patchcore

torch.set_num_threads(1)
squared = patchcore.PatchCoreLite0.scores
patchcore.PatchCoreLite0.scores = lambda self, x: squared(self, x).sqrt()
ck = checkpoint.load_checkpoint(sys.argv[1])
model, cfg = checkpoint.model_from_checkpoint(ck)
model.net.set_calibration(37.0, 5.0)
spec = data.load_dataset(cfg.data.root)
split = data.load_split(cfg.data.split_file)
train = data.select(spec, split["train"])
test = evaluate.eval_set(cfg, spec, data.select(spec, split["test"]), train, True)
cfg.infer.threshold = 0.5
m = evaluate.evaluate_model(model, test, cfg, torch.device("cpu"), 1)
print("sqrt", {k: round(m[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")}, flush=True)
