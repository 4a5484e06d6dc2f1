"""Choose the threshold of a finished run's best.pt on its validation split, then evaluate the test split with it.

    python benchmarks/probes/calibrate_and_test.py RUN/best.pt val-f1|val-frr
Prints the threshold and the test metrics (engine.calibrate_threshold + engine.evaluate_model, the predict path).
"""
import json, sys, torch
from defectseg import engine
ck_path=sys.argv[1]; rule=sys.argv[2]
ck=engine.load_checkpoint(ck_path); model,cfg=engine.model_from_checkpoint(ck)
spec=engine.load_dataset(cfg.data.root); split=engine.load_split(cfg.data.split_file)
train=engine.select(spec, split["train"])
val=engine.eval_set(cfg, spec, engine.select(spec, split["val"]), train, True)
thr, how=engine.calibrate_threshold(model, val, cfg, torch.device("cpu"), ck["num_classes"], rule, 0.01)
print("threshold", thr, flush=True)
cfg.infer.threshold=thr
test=engine.eval_set(cfg, spec, engine.select(spec, split["test"]), train, True)
m=engine.evaluate_model(model, test, cfg, torch.device("cpu"), ck["num_classes"], regions=True)
print(json.dumps({k: round(v,4) for k,v in m.items()}))
