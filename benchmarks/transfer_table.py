"""The transfer-learning table of docs/results.md from the run folders `benchmarks/transfer.sh` wrote: one row per
run (test metrics from its report.md, wall time), then mean ± std over the seeds of each recipe on magnetic tile.

    python benchmarks/transfer_table.py > /tmp/transfer.md
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
ROWS = [
    ("magnetic-tile", "transfer-seed0"),
    ("magnetic-tile", "transfer-seed1"),
    ("magnetic-tile", "transfer-seed2"),
    ("magnetic-tile", "transfer-head-seed0"),
    ("magnetic-tile", "transfer-head-seed1"),
    ("magnetic-tile", "transfer-head-seed2"),
    ("magnetic-tile", "transfer-headd-seed0"),
    ("magnetic-tile", "transfer-headd-seed1"),
    ("magnetic-tile", "transfer-headd-seed2"),
    ("magnetic-tile", "transfer-scratch-seed0"),
    ("magnetic-tile", "transfer-headdec-seed1"),
    ("magnetic-tile", "transfer-headg01-seed0"),
    ("magnetic-tile", "transfer-headg01-seed1"),
    ("magnetic-tile", "transfer-headg01-seed2"),
    ("magnetic-tile", "defaults-seed0-alone"),
    ("neu-seg", "transfer"),
    ("neu-seg", "transfer-headg01"),
    ("dagm-samples", "transfer"),
    ("dagm-samples", "transfer-headg01"),
    ("dagm-samples", "defaults"),
]
COLUMNS = ("defect_iou", "miou", "image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro", "region_ap50")


def read(folder: Path) -> dict[str, float] | None:
    report = folder / "report.md"
    if not report.is_file():
        return None
    text = report.read_text()
    out = {k: float(v) for k, v in re.findall(r"^\| (\w+) \| ([-\d.na]+) \|$", text, re.M)}
    out["seconds"] = float(re.search(r"wall time (\d+) s", text).group(1))
    return out


def main() -> None:
    print("| dataset | run | " + " | ".join(COLUMNS) + " | wall s |")
    print("|---|---|" + "---|" * (len(COLUMNS) + 1))
    found: dict[tuple[str, str], dict[str, float]] = {}
    for dataset, name in ROWS:
        m = read(R / dataset / name)
        if m is None:
            continue
        found[(dataset, name)] = m
        cells = [f"{m.get(k, float('nan')):.3f}" for k in COLUMNS]
        print(f"| {dataset} | {name} | " + " | ".join(cells) + f" | {m['seconds']:.0f} |")
    print()
    for recipe in ("transfer-seed", "transfer-head-seed", "transfer-headd-seed", "transfer-headg01-seed"):
        runs = [m for (d, n), m in found.items() if d == "magnetic-tile" and n.startswith(recipe)]
        if len(runs) < 2:
            continue
        stats = {k: (statistics.mean(r[k] for r in runs), statistics.stdev(r[k] for r in runs)) for k in COLUMNS}
        print(
            f"- magnetic tile, {recipe}N, {len(runs)} seeds: "
            + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in stats.items())
        )


if __name__ == "__main__":
    main()
