"""The demo's whole path (data -> train -> evaluate -> predict) at toy scale; `make demo` runs it full size."""

import json

from defectseg.data import load_dataset
from defectseg.demo import run_demo


def test_demo_runs_end_to_end_at_toy_scale(tmp_path):
    m = run_demo(tmp_path, device="cpu", quiet=True, n_per_class=6, size=32, iterations=3)
    assert 0.0 <= m["miou"] <= 1.0 and "region_ap50" in m
    run = tmp_path / "runs" / "demo"
    assert (run / "report.md").is_file() and (run / "best.pt").is_file()
    pred = tmp_path / "predictions"
    records = [json.loads(line) for line in (pred / "results.jsonl").read_text().splitlines()]
    test = [s for s in load_dataset(tmp_path / "data").samples if s.split == "test"]
    n_def = min(4, sum(bool(s.defective) for s in test))
    assert len(records) == n_def + min(4, len(test) - n_def) > 4  # defective and defect-free images
    assert all("/Test/" in r["path"] for r in records)
    assert len(list(pred.glob("*_overlay.png"))) == len(records)
