"""Choose the threshold of a finished run's best.pt on its validation split, then evaluate the test split with it.

    python benchmarks/probes/calibrate_and_test.py RUN/best.pt val-f1|val-frr
Prints the threshold and the test metrics (evaluate.calibrate_threshold + evaluate.evaluate_model, the predict path).
"""

import json
import sys

import torch

from defectseg import checkpoint, data, evaluate

ck_path = sys.argv[1]
rule = sys.argv[2]
ck = checkpoint.load_checkpoint(ck_path)
model, cfg = checkpoint.model_from_checkpoint(ck)
spec = data.load_dataset(cfg.data.root)
split = data.load_split(cfg.data.split_file)
train = data.select(spec, split["train"])
val = evaluate.eval_set(cfg, spec, data.select(spec, split["val"]), train, True)
thr, how = evaluate.calibrate_threshold(model, val, cfg, torch.device("cpu"), ck["num_classes"], rule, 0.01)
print("threshold", thr, flush=True)
cfg.infer.threshold = thr
test = evaluate.eval_set(cfg, spec, data.select(spec, split["test"]), train, True)
m = evaluate.evaluate_model(model, test, cfg, torch.device("cpu"), ck["num_classes"], regions=True)
print(json.dumps({k: round(v, 4) for k, v in m.items()}))
