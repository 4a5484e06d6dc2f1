"""The demo's whole path (data -> train -> evaluate -> predict) at toy scale; `make demo` runs it full size."""
from defectseg.demo import run_demo


def test_demo_runs_end_to_end_at_toy_scale(tmp_path):
    m = run_demo(tmp_path, device="cpu", quiet=True, n_per_class=4, size=32, iterations=3)
    assert 0.0 <= m["miou"] <= 1.0 and "region_ap50" in m
    run = tmp_path / "runs" / "demo"
    assert (run / "report.md").is_file() and (run / "best.pt").is_file()
    pred = tmp_path / "predictions"
    lines = (pred / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4  # n_per_class=4: 2 test images in each of Class1 and Class2
    assert len(list(pred.glob("*_overlay.png"))) == 4
