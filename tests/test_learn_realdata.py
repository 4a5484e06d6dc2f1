"""Does training still learn real defects? The default model trains for about a minute on a downsized
magnetic-tile subset (../shared/data; skipped when absent) and must leave the all-background plateau by far.

The subset is written to a temporary folder in the magnetic-tile layout: the Break, Fray and Uneven images of the
reference split (`split-70-15-15.json`) plus as many defect-free ones, downsized by 2 (so two minutes of CPU
training sees the subset many times), keeping each image's split. All-background prediction scores defect IoU 0
and pixel AUROC 0.5; the figures asserted are far from both and were measured well above them (see
docs/results.md, section CI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectseg import config as C
from defectseg.trainer import train

SHARED = Path(os.environ.get("DEFECTSEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MT = SHARED / "magnetic-tile"
GROUPS = ("MT_Break", "MT_Fray", "MT_Uneven")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (MT / "split-70-15-15.json").is_file(), reason=f"no magnetic tile at {MT}"),
]


def make_subset(dst: Path, scale: float = 0.5, free_per_defective: int = 1) -> Path:
    """Write the downsized subset to `dst` (magnetic-tile layout) and return its split file; each split keeps
    `free_per_defective` defect-free images per defective one (where the split has that many)."""
    split = json.loads((MT / "split-70-15-15.json").read_text())
    out: dict[str, list[str]] = {}
    for part in ("train", "val", "test"):
        keys = [k for k in split[part] if k.split("/")[0] in GROUPS]
        free = [k for k in split[part] if k.startswith("MT_Free/")]
        keys += free[: free_per_defective * len(keys)]
        for key in keys:
            src = MT / key
            image = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str(src.with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
            size = (max(16, round(image.shape[1] * scale)), max(16, round(image.shape[0] * scale)))
            (dst / key).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(dst / key), cv2.resize(image, size, interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 100]
            )
            small = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str((dst / key).with_suffix(".png")), np.where(small > 127, 255, 0).astype(np.uint8))
        out[part] = keys
    path = dst / "split.json"
    path.write_text(json.dumps(out))
    return path


def test_default_model_learns_magnetic_tile(tmp_path):
    data = tmp_path / "mt"
    split_file = make_subset(data)
    # the defaults a user gets (the default model with its recipe), but for the data, its size, the length and the
    # output folder
    cfg = C.resolve(
        overrides={
            "name": "learn",
            "out_dir": str(tmp_path / "runs"),
            "data": {"root": str(data), "split_file": str(split_file), "size": 128},  # the tiles are about 135 x 160
            "train": {"epochs": 4, "eval_every": 2},
        }
    )
    result = train(cfg, quiet=True)
    m = result.test_metrics
    print(
        {k: round(v, 3) for k, v in m.items() if k in ("defect_iou", "pixel_auroc", "pixel_ap", "image_auroc")},
        f"{result.seconds:.0f} s",
    )
    # Measured here: unet-lite0 (the default since 2026-12-06), 4 epochs: defect IoU 0.375, pixel AUROC 0.891 in 81 s
    # beside two trainings; cheapmix-m (the default before) reached 0.18-0.24 and 0.74-0.79 in 12 epochs.
    assert m["pixel_auroc"] > 0.65
    assert m["defect_iou"] > 0.1
