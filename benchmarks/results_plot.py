"""Test defect IoU against CPU batch-1 latency, one point per model and dataset (its best finished run) of the
results table (docs/results.md).

Reads each run folder benchmarks/results/<dataset>/<run>/ that holds report.md (test metrics) and config.yaml
(model, training size), and the latency tables benchmarks/results/latency-<size>[-rgb].md written by
`defectseg benchmark` (median ms per model at that size). A run whose model and size have no latency row is
listed and left out of the plot. Usage: python benchmarks/results_plot.py [OUT.png]  (default docs/results.png)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent / "results"


def table(path: Path) -> list[dict[str, str]]:
    """The rows of the first markdown table in `path` as dicts keyed by its header."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return []

    def cells(ln: str) -> list[str]:
        return [c.strip() for c in ln.strip().strip("|").split("|")]

    head = cells(lines[0])
    return [dict(zip(head, cells(ln))) for ln in lines[2:]]


def latencies() -> dict[tuple[str, int], tuple[float, str]]:
    """(model, size) -> (median batch-1 ms, backend) from every latency-<size>.md (eager PyTorch) and
    latency-lite0-<size>.md (the default backend: ONNX Runtime); eager wins where a model has both."""
    out: dict[tuple[str, int], tuple[float, str]] = {}
    for path in sorted(ROOT.glob("latency-*.md"), key=lambda p: "lite0" not in p.name):  # eager tables last
        size = int(re.fullmatch(r"latency-(?:lite0-)?(\d+)(-\w+)?\.md", path.name).group(1))  # -rgb: 3 channels
        for row in table(path):
            if row.get("batch") == "1" and row.get("median ms"):
                out[(row["model"], size)] = (float(row["median ms"]), row.get("backend", "torch"))
    return out


def runs() -> list[dict]:
    """One dict per finished run: dataset, run, model, size, defect_iou (binary, or the mean over the defect
    classes: evaluation's defect_iou is that mean)."""
    out = []
    for report in sorted(ROOT.glob("*/*/report.md")):
        cfg = yaml.safe_load((report.parent / "config.yaml").read_text())
        data = cfg["data"]
        if (
            cfg["train"].get("task") == "classify"
            or data.get("defective_only")
            or data.get("defect_free_only")
            or data.get("defective_images") is not None
        ):  # .get: run folders written before these keys existed
            continue  # a gate, or a model that did not see every real defect (few-label curve, cascade part)
        metrics = {r["metric"]: float(r["value"]) for r in table(report)}
        size = cfg["data"]["crop"] or cfg["data"]["size"]  # crops train at crop size; latency at that size
        out.append(
            {
                "dataset": report.parent.parent.name,
                "run": report.parent.name,
                "model": cfg["model"]["name"],
                "size": int(size),
                "defect_iou": metrics["defect_iou"],
            }
        )
    return out


def main(out_png: str = "docs/results.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat, done = latencies(), runs()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, dataset in enumerate(sorted({r["dataset"] for r in done})):
        best: dict[str, tuple[float, float, str]] = {}  # model -> its best run on this dataset
        for r in (r for r in done if r["dataset"] == dataset):
            found = lat.get((r["model"], r["size"]))
            if found is None:
                print(f"left out {dataset}/{r['run']}: no latency row for {r['model']} at {r['size']}^2")
                continue
            ms, backend = found
            mark = "" if backend == "torch" else ", ORT"
            if r["model"] not in best or r["defect_iou"] > best[r["model"]][1]:
                best[r["model"]] = (ms, r["defect_iou"], f"{r['model']} {r['size']}²{mark} ({r['run']})")
        points = list(best.values())
        if not points:
            continue
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker="os^D"[i % 4], label=dataset)
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlim(0, 1.5 * max(ax.get_xlim()[1], 1))  # room for the labels right of the last point
    ax.set_xlabel("CPU batch-1 latency at the training size, ms (2 threads; PyTorch eager unless marked ORT)")
    ax.set_ylabel("test defect IoU (mean over defect classes)")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("best run per model: test defect IoU against CPU latency")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"plot: {out_png}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
