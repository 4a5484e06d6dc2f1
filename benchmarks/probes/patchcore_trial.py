"""Issue 26's quick trial, rebuilt outside the package, to find what separates its 0.878 / 0.828 (random 60k bank)
from patchcore-lite0's figures: the same pipeline (magnetic tile's reporting split, the 666 good training tiles
resized bilinearly to 256², features after blocks 4 and 10 each 3x3-averaged, stride 16 upsampled to stride 8, a
random bank, squared distance to the nearest bank row, the map upsampled to the tile's size and smoothed with
sigma 4 there, image score the map's maximum), with the feature extractor swapped per variant:

- gray-imagenet: one gray stem channel with ImageNet's mean and std folded in (the package until 2026-12-06);
- rgb-imagenet: the three-channel stem as the file holds it, the gray tile replicated to RGB and normalised by
  ImageNet's mean and std (what a user of the PyTorch port's example would write);
- rgb-lite: the same, normalised by (pixel - 127) / 128 (TensorFlow's EfficientNet-Lite preprocessing);
- gray-lite: one gray stem channel with (pixel - 127) / 128 folded in (the package now).

Each 3x3 average counts the zero padding outside the map (PyTorch's default, as the trial had it); a variant
ending in -edge averages over the inside of the window only (count_include_pad=False, as the package had it).

    python benchmarks/probes/patchcore_trial.py [DATA_DIR] [BANK] [VARIANT ...]

BANK: rows drawn at random (default 60000), or gN for a greedy coreset of N rows (`models.patchcore.greedy_coreset`,
as the package draws its bank).
"""

import json
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from defectseg.metrics import auroc_score
from defectseg.models.efficientnet_lite import EfficientNetLite0
from defectseg.models.patchcore import greedy_coreset

torch.set_num_threads(2)
root = (sys.argv[1] if len(sys.argv) > 1 else "../shared/data") + "/magnetic-tile"
bank_arg = sys.argv[2] if len(sys.argv) > 2 else "60000"
greedy, bank_size = bank_arg.startswith("g"), int(bank_arg.lstrip("g"))
variants = sys.argv[3:] or ["gray-imagenet", "rgb-imagenet", "rgb-lite", "gray-lite"]
split = json.load(open(f"{root}/split-70-15-15.json"))


def load(rel: str) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.imread(f"{root}/{rel}", cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(f"{root}/{rel[:-4]}.png", cv2.IMREAD_GRAYSCALE)
    return img, (mask > 127) if mask is not None else np.zeros(img.shape, bool)


train = [load(r) for r in split["train"]]
train = [img for img, m in train if not m.any()]
test = [load(r) for r in split["test"]]
print(f"{len(train)} good training tiles, {len(test)} test tiles", flush=True)


def batch(images: list[np.ndarray]) -> torch.Tensor:
    return (
        torch.from_numpy(np.stack([cv2.resize(a, (256, 256), interpolation=cv2.INTER_LINEAR) for a in images]))[
            :, None
        ].float()
        / 255
    )


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE = ((127 / 255,) * 3, (128 / 255,) * 3)


def extractor(variant: str):
    gray = variant.startswith("gray")
    mean, std = IMAGENET if "imagenet" in variant else LITE
    border_zeros = not variant.endswith("-edge")  # -edge: the 3x3 average over the window's inside only
    net = EfficientNetLite0(1 if gray else 3).eval()
    net.load_imagenet(fold_normalisation=gray, mean=mean, std=std)
    if gray:  # folded into the stem
        mean, std = (0.0,), (1.0,)
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        y = net.stem((x.expand(-1, 1 if gray else 3, -1, -1) - mean) / std)
        maps = []
        for i, block in enumerate(net.blocks[:11]):
            y = block(y)
            if i in (4, 10):
                maps.append(F.avg_pool2d(y, 3, 1, 1, count_include_pad=border_zeros))
        return torch.cat([maps[0], F.interpolate(maps[1], size=maps[0].shape[2:], mode="bilinear")], 1)

    return features


def patches(features, images: list[np.ndarray]) -> torch.Tensor:
    out = [features(batch(images[i : i + 16])) for i in range(0, len(images), 16)]
    return torch.cat(out)  # (N, 152, 32, 32)


for variant in variants:
    t0 = time.time()
    features = extractor(variant)
    f_train = patches(features, train)
    vectors = f_train.permute(0, 2, 3, 1).reshape(-1, f_train.shape[1])
    gen = torch.Generator().manual_seed(0)
    keep = greedy_coreset(vectors, bank_size) if greedy else torch.randperm(len(vectors), generator=gen)[:bank_size]
    bank = vectors[keep]
    bank_sq = (bank * bank).sum(1)
    f_test = patches(features, [a for a, _ in test])
    scores, labels, pix_s, pix_l = [], [], [], []
    for f, (img, mask) in zip(f_test, test):
        q = f.permute(1, 2, 0).reshape(-1, f.shape[0])
        d = torch.full((len(q),), float("inf"))
        for s in range(0, len(bank), 8192):
            d = torch.minimum(
                d, ((q * q).sum(1, keepdim=True) - 2 * q @ bank[s : s + 8192].T + bank_sq[s : s + 8192]).amin(1)
            )
        m = cv2.resize(
            d.clamp_min(0).view(32, 32).numpy(), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR
        )
        m = cv2.GaussianBlur(m, (0, 0), 4)
        scores.append(m.max())
        labels.append(mask.any())
        pix_s.append(m.ravel()[::4])
        pix_l.append(mask.ravel()[::4])
    image = auroc_score(np.array(scores), np.array(labels))
    pixel = auroc_score(np.concatenate(pix_s), np.concatenate(pix_l))
    print(
        f"{variant}: bank {len(bank)} {'greedy' if greedy else 'random'}, image AUROC {image:.3f}, "
        f"pixel AUROC {pixel:.3f} ({time.time() - t0:.0f} s)",
        flush=True,
    )
