"""Does `defectseg evaluate` report what `defectseg predict` delivers?

Runs both commands on the same images and scores the masks that `predict` wrote against the ground truth with
the same whole-split confusion matrix `evaluate` uses; prints the two defect IoUs (and image-level accuracy)
side by side. The CLI is called as a user would, so the script works whatever the code inside looks like.

    python benchmarks/eval_vs_predict.py --checkpoint runs/d10/best.pt --data DIR [--images DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from defectseg.data import load_dataset, read_image, read_mask
from defectseg.metrics import ConfusionMatrix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="dataset folder (every sample is evaluated: --split all)")
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("defectseg"))
    spec = load_dataset(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / "eval.json"
        subprocess.run(
            [
                exe,
                "evaluate",
                "--checkpoint",
                args.checkpoint,
                "--data",
                args.data,
                "--split",
                "all",
                "--json",
                str(ev),
            ],
            check=True,
            capture_output=True,
        )
        reported = json.loads(ev.read_text())
        out = Path(tmp) / "pred"
        images = [str(s.image) for s in spec.samples]
        subprocess.run(
            [exe, "predict", *images, "--checkpoint", args.checkpoint, "--out", str(out), "-q", "--no-overlays"],
            check=True,
            capture_output=True,
        )
        records = {Path(r["path"]).resolve(): r for r in map(json.loads, open(out / "results.jsonl"))}
        cm = ConfusionMatrix(2)
        correct = 0
        for s in spec.samples:
            r = records[Path(s.image).resolve()]
            pred = (read_image(out / r["mask"], 1) > 0).astype(np.int64)
            gt = (read_mask(s.mask, s.mask_rule) > 0).astype(np.int64) if s.mask else np.zeros_like(pred)
            cm.update(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])
            correct += (r["verdict"] == "NG") == bool(gt.any())
    delivered = cm.compute()
    print(f"images: {len(spec.samples)}")
    print(f"defect IoU   evaluate {reported['defect_iou']:.4f}   predict masks {delivered['defect_iou']:.4f}")
    print(f"image acc    evaluate {reported['image_acc']:.4f}   predict verdicts {correct / len(spec.samples):.4f}")


if __name__ == "__main__":
    main()
