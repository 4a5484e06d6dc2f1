"""Pictures for people: training curves and defect overlays."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path | None:
    """Plot train loss and every validation metric of metrics.csv against epoch; None if there is nothing yet."""
    import matplotlib  # heavy (about a second): only the end of training and `benchmark --plot` draw

    matplotlib.use("Agg")  # no display on a training box; must precede pyplot
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    val_keys = [k for k in rows[0] if k.startswith("val_")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [float(r["train_loss"]) for r in rows], label="train loss")
    ax1.set_xlabel("epoch"), ax1.set_title("loss"), ax1.legend()
    for k in val_keys:  # only evaluated epochs (eval_every may skip some), so lines do not break
        pts = [(e, float(r[k])) for e, r in zip(epochs, rows) if r.get(k) not in (None, "", "nan")]
        if pts:
            ax2.plot(*zip(*pts), marker=".", label=k[4:])
    ax2.set_xlabel("epoch"), ax2.set_title("validation"), ax2.set_ylim(0, 1)
    if val_keys:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


_PALETTE = np.array(
    [[0, 0, 0], [255, 60, 60], [60, 200, 60], [60, 120, 255], [255, 200, 0], [200, 0, 255], [0, 220, 220]],
    dtype=np.uint8,
)


def overlay(image: np.ndarray, mask: np.ndarray, defects: list[dict], alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 picture: the image with defect pixels tinted by class, each defect boxed and labelled with its area.

    image: (H, W) or (H, W, 3) uint8; mask: (H, W) class ids; defects: records from `localize.PostProcess`.
    """
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image.copy()
    colors = _PALETTE[np.minimum(mask, len(_PALETTE) - 1)]
    sel = mask > 0
    rgb[sel] = (rgb[sel] * (1 - alpha) + colors[sel] * alpha).astype(np.uint8)
    thick = max(1, round(max(rgb.shape[:2]) / 400))
    for d in defects:
        color = tuple(int(c) for c in _PALETTE[min(int(d.get("class", 1)), len(_PALETTE) - 1)])
        cv2.rectangle(rgb, (int(d["x1"]), int(d["y1"])), (int(d["x2"]) - 1, int(d["y2"]) - 1), color, thick)
        label, scale = str(int(d["area"])), 0.35 * thick
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        # above the box, or below it at the top edge; shifted left at the right edge: always within the picture
        x = min(max(0, int(d["x1"])), max(0, rgb.shape[1] - tw))
        y = int(d["y1"]) - 3 if int(d["y1"]) - 3 - th >= 0 else min(rgb.shape[0] - base, int(d["y2"]) + th + 2)
        cv2.putText(rgb, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return rgb
