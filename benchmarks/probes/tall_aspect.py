"""Do tall images learn better at their own aspect (data.keep_aspect) than squashed to a square? A tall set made
from magnetic tile: the tiles of the reference split (split-70-15-15.json, each keeps its split) whose long side
is at least 1.5 times the short one, wide ones turned upright, at native resolution (median height/width about 2).
The default model, defaults but size 128 and 15 epochs, keep_aspect on (it picks the shape) and off (128 x 128),
seeds 0 and 1. Test defect IoU, image AUROC and pixel AP on the set's test split. Rows appended to OUT.

    OMP_NUM_THREADS=1 python benchmarks/probes/tall_aspect.py benchmarks/results/tall-aspect.md
"""

import json
import sys
import tempfile
from pathlib import Path

import cv2

from defectseg import config as C
from defectseg.checkpoint import load_checkpoint
from defectseg.trainer import train

MT = Path(__file__).resolve().parents[3] / "shared" / "data" / "magnetic-tile"
out = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp) / "mt"
    split = json.loads((MT / "split-70-15-15.json").read_text())
    kept: dict[str, list[str]] = {}
    for part in ("train", "val", "test"):
        kept[part] = []
        for key in split[part]:
            image = cv2.imread(str(MT / key), cv2.IMREAD_GRAYSCALE)
            mask = cv2.imread(str((MT / key).with_suffix(".png")), cv2.IMREAD_GRAYSCALE)
            h, w = image.shape
            if max(h, w) < 1.5 * min(h, w):
                continue
            if w > h:  # turn wide tiles upright: every image of the set is tall
                image, mask = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE), cv2.rotate(mask, cv2.ROTATE_90_CLOCKWISE)
            (data / key).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(data / key), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
            cv2.imwrite(str((data / key).with_suffix(".png")), mask)
            kept[part].append(key)
    (data / "split.json").write_text(json.dumps(kept))
    print({k: len(v) for k, v in kept.items()}, flush=True)
    if not out.exists():
        out.write_text(
            "| seed | keep_aspect | shape | test defect IoU | image AUROC | pixel AP | seconds |\n"
            "|---|---|---|---|---|---|---|\n"
        )
    for seed in (0, 1):
        for keep in (True, False):
            cfg = C.RunConfig()
            cfg.model.name = "cheapmix-m"  # the default model when this probe ran
            cfg.data.root, cfg.data.split_file, cfg.data.size = str(data), str(data / "split.json"), 128
            cfg.data.keep_aspect = keep
            cfg.train.epochs, cfg.train.eval_every, cfg.train.seed = 15, 5, seed
            cfg.out_dir, cfg.name = tmp + "/runs", f"s{seed}-{keep}"
            r = train(cfg, quiet=True)
            m = r.test_metrics
            shape = C.resize_hw(C.from_dict(load_checkpoint(r.best)["config"]).data)
            row = (
                f"| {seed} | {keep} | {shape[0]}x{shape[1]} | {m['defect_iou']:.3f} | {m['image_auroc']:.3f} "
                f"| {m['pixel_ap']:.3f} | {r.seconds:.0f} |\n"
            )
            print(row, end="", flush=True)
            with out.open("a") as f:
                f.write(row)
