"""The few-label curve of docs/results.md: test metrics against the number of real defective training images, with
and without made defects (synthetic defects and copy-paste), from the run folders `benchmarks/fewlabel.sh` writes.

Every finished run benchmarks/results/magnetic-tile/fewlabel-*/ (report.md + config.yaml) is one point; seeds of the
same setting are averaged (mean ± sample std, and each seed drawn faintly). Prints the markdown table of the means.
Usage: python benchmarks/fewlabel_plot.py [OUT.png]  (default docs/fewlabel.png)
"""

from __future__ import annotations

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


def settings() -> tuple[dict[tuple[str, bool], list[dict[str, float]]], dict[tuple[str, bool], str]]:
    """(real defective images: "0", "5", ..., "all"; made defects on?) -> the test metrics of each seed, and
    -> which made defects ("synthetic", "copy-paste", both or "none")."""
    out: dict[tuple[str, bool], list[dict[str, float]]] = {}
    what: dict[tuple[str, bool], str] = {}
    for report in sorted(RUNS.glob("fewlabel-*/report.md")):
        data = yaml.safe_load((report.parent / "config.yaml").read_text())["data"]
        k = "0" if data["defect_free_only"] else str(data["defective_images"] or "all")
        made = [
            name for name, p in (("synthetic", data["synthetic_defects"]), ("copy-paste", data["copy_paste"])) if p > 0
        ]
        key = (k, bool(made))
        out.setdefault(key, []).append({r["metric"]: float(r["value"]) for r in table(report)})
        what[key] = " + ".join(made) or "none"
    return out, what


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(out_png: str = "docs/fewlabel.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, what = settings()
    order = sorted({k for k, _ in runs}, key=lambda k: float("inf") if k == "all" else int(k))
    x = {k: i for i, k in enumerate(order)}  # categorical: 0, 5, 10, 20, 50, all
    print("| real defective tiles | made defects | seeds | " + " | ".join(m[1] for m in METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for made in (False, True):
        for k in order:
            if (k, made) in runs:
                rs = runs[(k, made)]
                cells = [
                    f"{m:.3f} ± {s:.3f}" if len(rs) > 1 else f"{m:.3f}"
                    for m, s in (mean_std([r[key] for r in rs]) for key, _ in METRICS)
                ]
                print(f"| {k} | {what[(k, made)]} | {len(rs)} | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
    for ax, (key, label) in zip(axes.flat, METRICS):
        for made, style, name in (
            (False, "o-", "real defects only"),
            (True, "s-", "+ made defects (synthetic; copy-paste from 5)"),
        ):
            ks = [k for k in order if (k, made) in runs]
            stats = [mean_std([r[key] for r in runs[(k, made)]]) for k in ks]
            line = ax.errorbar(
                [x[k] for k in ks], [m for m, _ in stats], yerr=[s for _, s in stats], fmt=style, capsize=3, label=name
            )
            for k in ks:  # each seed, faint
                ax.scatter(
                    [x[k]] * len(runs[(k, made)]),
                    [r[key] for r in runs[(k, made)]],
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
    fig.suptitle("magnetic tile, cheapmix-m 128², 30 epochs on the CPU: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"plot: {out_png}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
