"""`SegmentationDataset`: samples -> uint8 tensors, with a decoded-uint8 in-memory cache.

`ds[i]` -> {"image": uint8 (C,H,W), "mask": uint8 (H,W) class ids, "index": i}. With `size=(H,W)` the image
is resized (area when shrinking, bilinear when growing) and the mask with nearest, so batches collate.

Cache: decoded (and resized) arrays are kept in a per-process dict up to `cache_bytes`; past the cap the
remaining samples stream from disk every epoch. With DataLoader workers each worker has its own copy:
call `ds.preload()` in the main process before building the DataLoader (workers forked afterwards
inherit the filled cache), or use `persistent_workers=True`, so that epochs after the first read nothing
from disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .formats import Sample
from .io import IGNORE_INDEX, read_image, read_mask

DEFAULT_CACHE_BYTES = 2 * 1024**3


def resize_image(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The one resize of images and probability maps, (H, W[, C]) -> hw: area when shrinking both sides (it averages,
    so thin defects fade instead of aliasing away), bilinear otherwise. Training, the Predictor and the gate use it."""
    h, w = hw
    ih, iw = a.shape[:2]
    if (ih, iw) == (h, w):
        return a
    interp = cv2.INTER_AREA if (h <= ih and w <= iw) else cv2.INTER_LINEAR
    return cv2.resize(a, (w, h), interpolation=interp)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize image (`resize_image`) and mask (nearest: class ids stay class ids) to size=(H,W)."""
    h, w = size
    image = resize_image(image, (h, w))
    if mask.shape[:2] != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, mask


def load_pair(
    sample: Sample, channels: int | None = 1, num_classes: int = 2, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one sample: image uint8 (H,W) or (H,W,3), mask uint8 (H,W) class ids."""
    image = read_image(sample.image, channels)
    if sample.mask is None:
        mask = np.zeros(image.shape[:2], np.uint8)
    else:
        mask = read_mask(sample.mask, sample.mask_rule)
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{sample.mask}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                f"{sample.image.name} size {image.shape[1]}x{image.shape[0]} (WxH); fix or "
                "re-export the mask at the image's size (or pass --skip-bad)"
            )
        hi = int(mask.max()) if mask.size else 0
        if hi >= num_classes:
            raise ValueError(
                f"{sample.mask}: mask value {hi} is outside the known classes 0..{num_classes - 1} "
                f"(rule {sample.mask_rule!r}); fix the mask, or declare the classes (classes.txt "
                "for the generic layout, num_classes) (or pass --skip-bad)"
            )
    if size is not None:
        image, mask = resize_pair(image, mask, size)
    return image, mask


class SegmentationDataset(Dataset):
    """Torch dataset over `Sample`s returning uint8 tensors; see the module docstring."""

    def __init__(
        self,
        samples: Sequence[Sample],
        size: tuple[int, int] | None = None,
        channels: int = 1,
        cache: bool = True,
        num_classes: int = 2,
        skip_bad: bool = False,
        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.samples = list(samples)
        self.size = tuple(size) if size is not None else None
        self.channels, self.num_classes = channels, num_classes
        self.cache_enabled = cache
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0
        self.disk_reads = 0  # decodes done by this process (tests and diagnostics)
        self.skipped: list[tuple[str, str]] = []
        if skip_bad:
            self._drop_bad()

    # ---------------------------------------------------------------- reading
    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        self.disk_reads += 1
        return load_pair(self.samples[i], self.channels, self.num_classes, self.size)

    def _put(self, i: int, pair: tuple[np.ndarray, np.ndarray]) -> None:
        if not self.cache_enabled or i in self._cache:
            return
        nbytes = pair[0].nbytes + pair[1].nbytes
        if self.cache_bytes is not None and self._cached_bytes + nbytes > self.cache_bytes:
            return  # over the cap: this sample streams from disk
        self._cache[i] = pair
        self._cached_bytes += nbytes

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H,W) or (H,W,3), mask uint8 (H,W)) for sample i, from the cache when there."""
        pair = self._cache.get(i)
        if pair is None:
            pair = self._read(i)
            self._put(i, pair)
        return pair

    def _drop_bad(self) -> None:
        """Decode every sample once (filling the cache); drop and list those that fail."""
        good: list[Sample] = []
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for s in self.samples:
            try:
                pair = load_pair(s, self.channels, self.num_classes, self.size)
            except ValueError as exc:
                self.skipped.append((str(s.image), str(exc)))
                continue
            good.append(s)
            pairs.append(pair)
        self.samples = good
        self.disk_reads += len(good) + len(self.skipped)
        for i, pair in enumerate(pairs):
            self._put(i, pair)

    def preload(self, threads: int = 4) -> SegmentationDataset:
        """Decode every sample into the cache (up to cache_bytes) using a thread pool; returns self."""
        todo = [i for i in range(len(self)) if i not in self._cache]
        if not self.cache_enabled or not todo:
            return self
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for i, pair in zip(todo, pool.map(self._read, todo)):
                self._put(i, pair)
        return self

    @property
    def cached(self) -> int:
        return len(self._cache)

    # ---------------------------------------------------------------- Dataset
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        image, mask = self.arrays(i)
        img = torch.from_numpy(image.copy())
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1).contiguous()
        return {"image": img, "mask": torch.from_numpy(mask.copy()), "index": i}

    def meta(self, i: int) -> dict:
        s = self.samples[i]
        return {
            "key": s.key,
            "image": str(s.image),
            "mask": str(s.mask) if s.mask else None,
            "group": s.group,
            "split": s.split,
            "defective": s.defective,
        }


def infer_channels(samples: Sequence[Sample], n: int = 8) -> int:
    """3 when any of the first n images is truly colour, else 1 (RGB files whose channels are equal count
    as gray, like NEU-Seg's JPEGs)."""
    for s in list(samples)[:n]:
        try:
            a = read_image(s.image)
        except ValueError:
            continue  # reported when the sample is read
        if a.ndim == 3 and not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])):
            # JPEG chroma noise can make gray images slightly unequal: tolerate small differences
            d = max(
                int(np.abs(a[..., 0].astype(np.int16) - a[..., 1]).max()),
                int(np.abs(a[..., 1].astype(np.int16) - a[..., 2]).max()),
            )
            if d > 8:
                return 3
    return 1


class RandomCrops(Dataset):
    """One epoch of training windows at native resolution: item k is a `crop` x `crop` window of image
    `order[k]` of `dataset` (which must hold native-size images: size=None).

    With probability `defect_crops` a defective image's window is centred (give or take a quarter window) on one
    of its defect pixels, so thin cracks and pits are seen far more often than uniform crops would show them;
    otherwise the window is placed uniformly. Images smaller than the window are mirror-padded at the bottom
    and right (as the Predictor pads at inference) and the padding is `ignore_index` in the mask. The window of
    item k depends only on (seed, k): an epoch is reproducible whatever the loader's workers do.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        order: Sequence[int],
        crop: int,
        defect_crops: float,
        seed: int,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if dataset.size is not None:
            raise ValueError("RandomCrops needs a dataset of native-size images (size=None)")
        self.dataset, self.order, self.crop = dataset, list(order), crop
        self.defect_crops, self.seed, self.ignore_index = defect_crops, seed, ignore_index

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> dict:
        i = self.order[k]
        image, mask = self.dataset.arrays(i)
        rng = np.random.default_rng([self.seed, k])
        y, x = self._origin(mask, rng)
        c = self.crop
        image, mask = image[y : y + c, x : x + c], mask[y : y + c, x : x + c]
        ph, pw = c - mask.shape[0], c - mask.shape[1]
        if ph or pw:
            image = np.pad(image, [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2), mode="symmetric")
            mask = np.pad(mask, [(0, ph), (0, pw)], constant_values=self.ignore_index)
        img = torch.from_numpy(np.array(image))  # a copy: cached arrays are read-only, and the window is small
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1).contiguous()
        return {"image": img, "mask": torch.from_numpy(np.array(mask)), "index": i}

    def _origin(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the window inside the image (0 on an axis shorter than the window)."""
        h, w = mask.shape
        c = self.crop
        if rng.random() < self.defect_crops:
            ys, xs = np.nonzero((mask > 0) & (mask != self.ignore_index))
            if ys.size:
                j = rng.integers(ys.size)
                jitter = rng.integers(-(c // 4), c // 4 + 1, size=2)
                y, x = ys[j] - c // 2 + jitter[0], xs[j] - c // 2 + jitter[1]
                return int(np.clip(y, 0, max(0, h - c))), int(np.clip(x, 0, max(0, w - c)))
        return int(rng.integers(0, max(0, h - c) + 1)), int(rng.integers(0, max(0, w - c) + 1))


class WithReference(Dataset):
    """Reference (golden template) mode: each item's image gets a defect-free reference of the same
    product concatenated on the channel axis (image first), so `image` becomes (2C, H, W).

    references: one uint8 array per sample, (H, W) or (H, W, 3), already at the dataset's size.
    """

    def __init__(self, dataset: SegmentationDataset, references: Sequence[np.ndarray]) -> None:
        if len(references) != len(dataset):
            raise ValueError(f"{len(references)} references for {len(dataset)} samples")
        self.dataset, self.samples = dataset, dataset.samples
        self.references = [
            torch.from_numpy(np.array(r)).unsqueeze(0)
            if r.ndim == 2
            else torch.from_numpy(np.array(r)).permute(2, 0, 1).contiguous()
            for r in references
        ]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        ref = self.references[i]
        if ref.shape != item["image"].shape:
            raise ValueError(
                f"reference for {self.samples[i].image} has shape {tuple(ref.shape)}, the image "
                f"{tuple(item['image'].shape)}; give a reference with the image's channels"
            )
        item["image"] = torch.cat([item["image"], ref], 0)
        return item


def group_references(
    samples: Sequence[Sample],
    pool: Sequence[Sample],
    size: tuple[int, int] | None,
    channels: int,
    reference: str | Path,
) -> list[np.ndarray]:
    """A reference image per sample: the file `reference`, or with reference="group" the first defect-free
    image (by key) of the sample's group in `pool` (the training split), all resized to `size` (None: as read;
    samples that share a reference share one array).
    """

    def load(path: Path) -> np.ndarray:
        img = read_image(path, channels)
        return img if size is None else resize_pair(img, np.zeros(img.shape[:2], np.uint8), size)[0]

    if str(reference) != "group":
        ref = load(Path(reference))
        return [ref] * len(samples)
    by_group: dict[str, np.ndarray] = {}
    for s in sorted(pool, key=lambda s: s.key):
        if s.defective is False and s.group not in by_group:
            by_group[s.group] = load(s.image)
    missing = sorted({s.group for s in samples} - set(by_group))
    if missing:
        raise ValueError(
            f"reference mode 'group' needs a defect-free training image in every group; none in "
            f"{missing}. Give a reference file instead (data.reference=PATH)"
        )
    return [by_group[s.group] for s in samples]
