"""The few-label curve of docs/results.md: test metrics against the number of real defective training images, for
cheapmix-m from scratch with and without made defects (synthetic defects and copy-paste), for the pretrained
unet-lite0, and the good-parts model patchcore-lite0 at 0, from the run folders `benchmarks/fewlabel.sh` and
`benchmarks/anomaly.sh` write.

Every finished run benchmarks/results/magnetic-tile/fewlabel-*/ (report.md + config.yaml) is one point; seeds of the
same setting are averaged (mean ± sample std, and each seed drawn faintly). Prints the markdown table of the means,
and of the unet-lite0 rows behind the good-parts gate (fewlabel-lite0-*.gated.json).
Usage: python benchmarks/fewlabel_plot.py [OUT.png]  (default docs/fewlabel.png)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml
from results_plot import table

RUNS = Path(__file__).resolve().parent / "results" / "magnetic-tile"
METRICS = [
    ("defect_iou", "test defect IoU"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO (FPR ≤ 0.3)"),
]


def series_of(cfg: dict) -> str:
    """Which line of the plot a run belongs to: the model, and for cheapmix-m whether made defects (synthetic
    defects, and copy-paste where there are real ones to copy) were on."""
    data = cfg["data"]
    made = data["synthetic_defects"] > 0 or data["copy_paste"] > 0
    return cfg["model"]["name"] + (" + made defects" if made else "")


def settings() -> dict[tuple[str, str], list[dict[str, float]]]:
    """(real defective images: "0", "5", ..., "all"; series, `series_of`) -> the test metrics of each seed; the
    good-parts model (anomaly-patchcore, fitted on no defective image) is the point ("0", "patchcore-lite0")."""
    out: dict[tuple[str, str], list[dict[str, float]]] = {}
    for report in sorted(RUNS.glob("fewlabel-*/report.md")) + [RUNS / "anomaly-patchcore" / "report.md"]:
        cfg = yaml.safe_load((report.parent / "config.yaml").read_text())
        data = cfg["data"]
        k = "0" if data["defect_free_only"] else str(data["defective_images"] or "all")
        out.setdefault((k, series_of(cfg)), []).append({r["metric"]: float(r["value"]) for r in table(report)})
    return out


def gated() -> list[tuple[str, dict[str, float]]]:
    """(real defective images, test metrics) of each unet-lite0 row behind the good-parts gate (fewlabel.sh)."""
    out = []
    for path in sorted(RUNS.glob("fewlabel-lite0-*.gated.json")):
        k = path.name.removeprefix("fewlabel-lite0-").removesuffix(".gated.json")
        out.append((k, json.loads(path.read_text())))
    return sorted(out, key=lambda kv: float("inf") if kv[0] == "all" else int(kv[0]))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(out_png: str = "docs/fewlabel.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = settings()
    series = sorted({name for _, name in runs}, key=lambda n: (not n.startswith("cheapmix"), n))
    order = sorted({k for k, _ in runs}, key=lambda k: float("inf") if k == "all" else int(k))
    x = {k: i for i, k in enumerate(order)}  # categorical: 0, 5, 10, 20, 50, all
    print("| real defective tiles | model (made defects) | seeds | " + " | ".join(m[1] for m in METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for name in series:
        for k in order:
            if (k, name) in runs:
                rs = runs[(k, name)]
                cells = [
                    f"{m:.3f} ± {s:.3f}" if len(rs) > 1 else f"{m:.3f}"
                    for m, s in (mean_std([r[key] for r in rs]) for key, _ in METRICS)
                ]
                print(f"| {k} | {name} | {len(rs)} | " + " | ".join(cells) + " |")
    behind = gated()
    if behind:
        print("\nunet-lite0 behind the good-parts gate (evaluate --gate anomaly-patchcore/best.pt):\n")
        cols = [
            ("defect_iou", "test defect IoU"),
            ("image_acc", "image accuracy"),
            ("image_precision", "precision"),
            ("image_recall", "recall"),
            ("aupro", "AUPRO (FPR ≤ 0.3)"),
        ]
        print("| real defective tiles | " + " | ".join(c[1] for c in cols) + " |")
        print("|---|" + "---|" * len(cols))
        for k, m in behind:
            print(f"| {k} | " + " | ".join(f"{m[c]:.3f}" for c, _ in cols) + " |")
    styles = ["o-", "s-", "^", "D-"]  # cheapmix-m, + made defects, patchcore-lite0 (one point), unet-lite0
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
    for ax, (key, label) in zip(axes.flat, METRICS):
        for name, style in zip(series, styles):
            ks = [k for k in order if (k, name) in runs]
            stats = [mean_std([r[key] for r in runs[(k, name)]]) for k in ks]
            line = ax.errorbar(
                [x[k] for k in ks], [m for m, _ in stats], yerr=[s for _, s in stats], fmt=style, capsize=3, label=name
            )
            for k in ks:  # each seed, faint
                ax.scatter(
                    [x[k]] * len(runs[(k, name)]),
                    [r[key] for r in runs[(k, name)]],
                    s=10,
                    alpha=0.35,
                    color=line[0].get_color(),
                )
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("real defective training tiles (of 274)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("magnetic tile, on the CPU: cheapmix-m 128² 30 epochs, unet-lite0 its recipe; mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"plot: {out_png}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
