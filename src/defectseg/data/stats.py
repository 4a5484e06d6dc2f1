"""Dataset statistics: counts, defective fraction, image sizes, mean/std, class pixel frequencies and
median-frequency-balancing weights.

Median frequency balancing (Eigen & Fergus 2015, simplified): f_c = pixels of class c / all pixels,
w_c = median(f over classes with pixels) / f_c; a class with no pixels gets weight 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .dataset import SegmentationDataset, infer_channels, load_pair
from .formats import DatasetSpec


def median_frequency_weights(pixel_counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(pixel_counts, dtype=np.float64)
    total = counts.sum()
    weights = np.zeros_like(counts)
    present = counts > 0
    if total <= 0 or not present.any():
        return weights
    freq = counts / total
    weights[present] = np.median(freq[present]) / freq[present]
    return weights


def class_pixel_counts(dataset: SegmentationDataset | DatasetSpec, num_classes: int | None = None) -> np.ndarray:
    """Pixels per class over all masks (int64 array of length num_classes)."""
    if isinstance(dataset, DatasetSpec):
        n = num_classes or dataset.num_classes
        counts = np.zeros(n, np.int64)
        for s in dataset.samples:
            _, mask = load_pair(s, 1, n)
            counts += np.bincount(mask.ravel(), minlength=n)[:n]
        return counts
    n = num_classes or dataset.num_classes
    counts = np.zeros(n, np.int64)
    for i in range(len(dataset)):
        _, mask = dataset.arrays(i)
        counts += np.bincount(mask.ravel(), minlength=n)[:n]
    return counts


def dataset_stats(
    spec: DatasetSpec, skip_bad: bool = False, threads: int = 4, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Decode every sample once and summarise. With skip_bad, bad samples are counted and listed in
    result["skipped"] (together with spec.skipped) instead of raising."""
    n_cls = spec.num_classes
    channels = infer_channels(spec.samples)
    sums = np.zeros(channels, np.float64)
    sq = np.zeros(channels, np.float64)
    n_pix = 0
    counts = np.zeros(n_cls, np.int64)
    sizes: Counter = Counter()
    defective_masks = 0
    per_group: Counter = Counter()
    per_group_def: Counter = Counter()
    per_split: Counter = Counter()
    skipped = list(spec.skipped)

    def work(s):
        try:
            return s, load_pair(s, channels, n_cls), None
        except ValueError as exc:
            if not skip_bad:
                raise
            return s, None, str(exc)

    total = len(spec.samples)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for k, (s, pair, err) in enumerate(pool.map(work, spec.samples), start=1):
            if progress:
                progress(k, total)
            if pair is None:
                skipped.append((str(s.image), err))
                continue
            image, mask = pair
            img = image.reshape(-1, channels).astype(np.float64) / 255.0
            sums += img.sum(0)
            sq += (img * img).sum(0)
            n_pix += img.shape[0]
            bc = np.bincount(mask.ravel(), minlength=n_cls)[:n_cls]
            counts += bc
            d = bool(bc[1:].sum() > 0)
            defective_masks += d
            sizes[(image.shape[0], image.shape[1])] += 1
            per_group[s.group] += 1
            per_group_def[s.group] += d
            per_split[s.split or "-"] += 1
    n = sum(sizes.values())
    mean = sums / max(n_pix, 1)
    std = np.sqrt(np.maximum(sq / max(n_pix, 1) - mean**2, 0))
    hs = [h for (h, w), c in sizes.items() for _ in range(c)]
    ws = [w for (h, w), c in sizes.items() for _ in range(c)]
    layout_def = [s.defective for s in spec.samples]
    freq = counts / max(counts.sum(), 1)
    return {
        "root": str(spec.root),
        "format": spec.format,
        "images": n,
        "defective": int(defective_masks),
        "defect_free": int(n - defective_masks),
        "defective_fraction": float(defective_masks / n) if n else 0.0,
        "defective_by_layout": (sum(1 for d in layout_def if d) if all(d is not None for d in layout_def) else None),
        "groups": {g: {"images": per_group[g], "defective": per_group_def[g]} for g in sorted(per_group)},
        "splits": dict(sorted(per_split.items())),
        "channels": channels,
        "sizes": {
            "distinct": len(sizes),
            "most_common": [[h, w, c] for (h, w), c in sizes.most_common(5)],
            "height": [int(min(hs)), int(np.median(hs)), int(max(hs))] if hs else [],
            "width": [int(min(ws)), int(np.median(ws)), int(max(ws))] if ws else [],
        },
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "class_names": list(spec.class_names),
        "pixel_counts": [int(x) for x in counts],
        "pixel_frequency": [float(x) for x in freq],
        "median_frequency_weights": [float(x) for x in median_frequency_weights(counts)],
        "skipped": [[p, r] for p, r in skipped],
    }
