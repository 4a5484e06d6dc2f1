"""How much the image pipeline moves a fitted patchcore-lite0's test image AUROC, and where its own threshold sits
among the good validation tiles (docs/results.md, the good-parts section and the few-label curve's gate).

    python benchmarks/probes/patchcore_scores.py RUN/best.pt
Image scores on the run's test split (magnetic tile layout: MT_*/Imgs/<stem>.jpg with <stem>.png masks): the raw
map's maximum at 256² after an area resize (the package's resize when shrinking), after a bilinear one, and the
stride-8 distances upsampled to the tile's own size and smoothed there (sigma 4) instead; then the share of good
validation tiles whose gate probability (`predictor.Gate`) is at or above the checkpoint's threshold.
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from defectseg import checkpoint
from defectseg.backends import load_net
from defectseg.data.io import read_image
from defectseg.metrics import auroc_score
from defectseg.predictor import Gate

torch.set_num_threads(2)
ck_path = Path(sys.argv[1])
model, cfg = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(ck_path))
net, root = model.net.eval(), Path(cfg.data.root)
split = json.loads((ck_path.parent / "split.json").read_text())


def tile(key: str) -> tuple[np.ndarray, bool]:
    mask = cv2.imread(str(root / f"{key[:-4]}.png"), cv2.IMREAD_GRAYSCALE)
    return cv2.imread(str(root / key), cv2.IMREAD_GRAYSCALE), bool((mask > 127).any())


scores: dict[str, list[float]] = {"area, 256²": [], "bilinear, 256²": [], "bilinear, smoothed at the tile's size": []}
labels = []
with torch.no_grad():
    for key in split["test"]:
        img, defective = tile(key)
        labels.append(defective)
        for interp, name in ((cv2.INTER_AREA, "area, 256²"), (cv2.INTER_LINEAR, "bilinear, 256²")):
            x = torch.from_numpy(cv2.resize(img, (256, 256), interpolation=interp))[None, None].float() / 255
            scores[name].append(float(net(x).max()))
            if interp == cv2.INTER_LINEAR:
                s = cv2.resize(net.scores(x)[0, 0].numpy(), (img.shape[1], img.shape[0]))
                scores["bilinear, smoothed at the tile's size"].append(float(cv2.GaussianBlur(s, (0, 0), 4).max()))
for name, v in scores.items():
    print(f"test image AUROC, {name}: {auroc_score(np.array(v), np.array(labels)):.3f}")
good = [read_image(root / k, 1) for k in split["val"] if not tile(k)[1]]
gate = Gate(load_net(ck_path, "cpu", "torch"))
above = float((gate.probabilities(good) >= gate.threshold).mean())
print(f"good validation tiles at or above the threshold {gate.threshold:.3f}: {above:.1%} of {len(good)}")
