"""Does a floor on the share of defective draws help a mostly defect-free training set? The CI subset of magnetic
tile (tests/test_learn_realdata.py: Break, Fray, Uneven, half size) with three defect-free tiles per defective one,
and only 30 real defective training tiles kept (`data.defective_images`): 30 of 492 training tiles (6 %) are
defective. The default model, defaults but size 128 and 12 epochs, with `data.defective_share` None (natural
draws), 0.25 and 0.5, seeds 0 and 1 (the seed also picks the 30 tiles). Test defect IoU, image AUROC, pixel AP on
the subset's test split (natural proportions: a quarter defective). One thread; rows appended to OUT.

    OMP_NUM_THREADS=1 python benchmarks/probes/share_floor.py benchmarks/results/share-floor.md
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_learn_realdata import make_subset  # noqa: E402

from defectseg import config as C  # noqa: E402
from defectseg.trainer import train  # noqa: E402

out = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp) / "mt"
    split_file = make_subset(data, free_per_defective=3)
    if not out.exists():
        out.write_text(
            "| seed | defective_share | test defect IoU | image AUROC | pixel AP | seconds |\n"
            "|---|---|---|---|---|---|\n"
        )
    for seed in (0, 1):
        for share in (None, 0.25, 0.5):
            cfg = C.RunConfig()
            cfg.model.name = "cheapmix-m"  # the default model when this probe ran
            cfg.data.root, cfg.data.split_file, cfg.data.size = str(data), str(split_file), 128
            cfg.data.defective_images, cfg.data.defective_share = 30, share
            cfg.train.epochs, cfg.train.eval_every, cfg.train.seed = 12, 4, seed
            cfg.out_dir, cfg.name = tmp + "/runs", f"s{seed}-{share}"
            r = train(cfg, quiet=True)
            m = r.test_metrics
            row = (
                f"| {seed} | {share} | {m['defect_iou']:.3f} | {m['image_auroc']:.3f} | {m['pixel_ap']:.3f} "
                f"| {r.seconds:.0f} |\n"
            )
            print(row, end="", flush=True)
            with out.open("a") as f:
                f.write(row)
