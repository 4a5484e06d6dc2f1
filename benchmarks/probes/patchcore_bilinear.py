"""patchcore-lite0 on magnetic tile with every image resize bilinear instead of area-when-shrinking (the fit, the
calibration, the threshold and the test evaluation alike): does the resize explain part of the gap to issue 26's
quick trial? Writes the run folder benchmarks/results/magnetic-tile/anomaly-patchcore-bilinear.

    python benchmarks/probes/patchcore_bilinear.py [DATA_DIR]
"""

import sys

import cv2

from defectseg import config as C
from defectseg import predictor
from defectseg.data import dataset
from defectseg.trainer import train


def bilinear(a, hw):
    h, w = hw
    return a if a.shape[:2] == (h, w) else cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)


dataset.resize_image = predictor.resize_image = bilinear  # both names the resize is called by
mt = (sys.argv[1] if len(sys.argv) > 1 else "../shared/data") + "/magnetic-tile"
cfg = C.resolve(
    overrides={
        "name": "anomaly-patchcore-bilinear",
        "out_dir": "benchmarks/results/magnetic-tile",
        "data": {"root": mt, "split_file": f"{mt}/split-70-15-15.json"},
        "train": {"task": "anomaly"},
    }
)
res = train(cfg, quiet=True, overwrite=True)
print({k: round(v, 4) for k, v in res.test_metrics.items() if k in ("image_auroc", "pixel_auroc", "aupro")})
