"""How well a checkpoint ranks pixels on magnetic tile: mean probability on defect vs background pixels and the
pixel AUROC, on the first 20 defective and 20 defect-free validation images (background pixels subsampled 1 in 50).

    python benchmarks/probes/pixel_ranking.py RUN/last.pt
"""

import json
import sys

import numpy as np

from defectseg.data import load_dataset, read_image, read_mask, select
from defectseg.metrics import auroc_score
from defectseg.predictor import Predictor

ck = sys.argv[1]
MT = "/work/shared/data/magnetic-tile"
spec = load_dataset(MT)
split = json.load(open(MT + "/split-70-15-15.json"))
val = select(spec, split["val"])
pr = Predictor.from_checkpoint(ck, device="cpu")
d = [s for s in val if s.defective][:20] + [s for s in val if not s.defective][:20]
res = pr.predict_arrays([read_image(s.image, 1) for s in d])
pos = []
neg = []
scores = []
for s, r in zip(d, res):
    gt = read_mask(s.mask, s.mask_rule) > 0 if s.mask else np.zeros(r.prob.shape, bool)
    pos.append(r.prob[gt])
    neg.append(r.prob[~gt][::50])
    scores.append(r.score)
pos = np.concatenate(pos)
neg = np.concatenate(neg)
print(f"prob defect px mean {pos.mean():.3f}  bg px mean {neg.mean():.3f}")
print(f"pixel auroc {auroc_score(np.r_[pos, neg], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]):.3f}")
print("image scores defective", np.round(scores[:8], 3), "free", np.round(scores[20:28], 3))
