"""Test image AUROC, pixel AUROC, AUPRO and pixel AP of a fitted patchcore-lite0 with its smoothing sigma replaced
(the bank and calibration unchanged; sigma only shapes the map).

    python benchmarks/probes/patchcore_sigma.py RUN/best.pt 0 2 8
"""

import json
import sys

import torch

from defectseg import checkpoint, data, evaluate

torch.set_num_threads(1)
ck = checkpoint.load_checkpoint(sys.argv[1])
for sigma in map(float, sys.argv[2:]):
    ck2 = dict(ck)
    cfgd = json.loads(json.dumps(ck["config"]))
    cfgd["model"]["options"]["sigma"] = sigma
    ck2["config"] = cfgd
    model, cfg = checkpoint.model_from_checkpoint(ck2)
    spec = data.load_dataset(cfg.data.root)
    split = data.load_split(cfg.data.split_file)
    train = data.select(spec, split["train"])
    test = evaluate.eval_set(cfg, spec, data.select(spec, split["test"]), train, True)
    m = evaluate.evaluate_model(model, test, cfg, torch.device("cpu"), 1)
    print(sigma, {k: round(m[k], 4) for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")}, flush=True)
