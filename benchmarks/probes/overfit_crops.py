"""Can a model fit real defects at all? 150 TrainSteps on 16 fixed defect-centred 128x128 magnetic-tile crops
(no augmentation); prints loss and train-crop IoU every 30 steps.

    OMP_NUM_THREADS=1 python benchmarks/probes/overfit_crops.py cheapmix-m 0.01 bce-dice
"""

import json
import sys
import time

import torch

from defectseg.data import load_dataset, select
from defectseg.data.dataset import RandomCrops, SegmentationDataset
from defectseg.data.transforms import Augmenter
from defectseg.losses import build_loss
from defectseg.models import PixelModel, create_model
from defectseg.step import TrainStep

torch.manual_seed(0)
MT = "/work/shared/data/magnetic-tile"
spec = load_dataset(MT)
split = json.load(open(MT + "/split-70-15-15.json"))
d = [s for s in select(spec, split["train"]) if s.defective][:16]
ds = SegmentationDataset(d, size=None)
rc = RandomCrops(ds, list(range(16)), 128, 1.0, 0)
x = torch.stack([rc[k]["image"] for k in range(16)])
m = torch.stack([rc[k]["mask"] for k in range(16)])
name = sys.argv[1]
lr = float(sys.argv[2])
loss = sys.argv[3]
model = PixelModel(create_model(name, **({"head": "linear"} if name.startswith("cheapnet") else {})))
step = TrainStep(model, build_loss(loss), torch.optim.Adam(model.parameters(), lr=lr), Augmenter("none"))
t = time.time()
for i in range(150):
    loss = step(x, m)
    if i % 30 == 29:
        with torch.no_grad():
            model.eval()
            p = torch.sigmoid(model(x.float()))[:, 0] >= 0.5
            model.train()
            g = m == 1
            inter = (p & g).sum().item()
            union = (p | g).sum().item()
        print(i + 1, round(loss, 4), "iou", round(inter / max(union, 1), 3), f"{time.time() - t:.0f}s", flush=True)
