"""The data of one training run: its split, the training set (resized, or native for crops; at the images' own
aspect with data.keep_aspect), the evaluation sets, each epoch's draws, and the checks made before the first epoch
so that a bad file fails now and not after the training."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config as C
from .data import DatasetSpec, SegmentationDataset, WithReference, load_dataset
from .data.io import defect_pixels, image_size
from .data.splits import load_split, make_split, save_split, select, split_counts, split_warnings, with_known_defect
from .evaluate import EvalSet, eval_set, split_images

__all__ = ["RunData", "aspect_shape", "epoch_order", "load_run_data", "prepare_split", "split_dataset"]

ASPECT_MIN = 1.5  # median height/width at or past which keep_aspect trains at the images' own aspect
SHAPE_MULTIPLE = 32  # keep_aspect rounds each side to this: a multiple of every registered model's size_multiple
CHECK_DECODE_LIMIT = 5000  # splits up to this many samples are decoded whole before training (`check_files`)


@dataclass
class RunData:
    """What `load_run_data` gives the trainer."""

    spec: DatasetSpec
    split: dict[str, list[str]]
    train_set: SegmentationDataset | WithReference
    defective: list[bool] | None  # per training image, when data.defective_share draws by it
    eval_sets: dict[str, EvalSet]  # "val", "test"
    skipped: list[tuple[str, str]]  # (file, why) of what data.skip_bad left out
    counts: dict[str, dict[str, int]]  # per split: images, defective, parts (`data.splits.split_counts`)


def prepare_split(cfg: C.RunConfig, spec: DatasetSpec, run_dir: Path | None) -> dict[str, list[str]]:
    """The run's split: reuse run_dir/split.json, else the configured split file, else a new seeded split."""
    existing = run_dir / "split.json" if run_dir else None
    if existing and existing.is_file():
        return _known_keys(load_split(existing), spec, existing, "delete it to draw a new split")
    if cfg.data.split_file:
        return _known_keys(
            load_split(cfg.data.split_file), spec, cfg.data.split_file, "fix it, or drop --split-file to draw a split"
        )
    return make_split(spec.samples, cfg.data.fractions, cfg.train.seed, cfg.data.keep_parts)


def _known_keys(split: dict[str, list[str]], spec: DatasetSpec, source: Path | str, fix: str) -> dict[str, list[str]]:
    """`split` when every key names an image of the dataset; else a ValueError naming the file and the keys."""
    known = {s.key for s in spec.samples}
    missing = [k for part in split.values() for k in part if k not in known]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise ValueError(
            f"split file {source}: {len(missing)} key(s) name no image of {spec.root}: {shown}; the file belongs to "
            f"another dataset or those images were removed: {fix}"
        )
    return split


def aspect_shape(sizes: Sequence[tuple[int, int]], size: int) -> tuple[int, int] | None:
    """The (H, W) `data.keep_aspect` trains at for images of these (H, W): their median aspect at about size²
    pixels, each side a multiple of SHAPE_MULTIPLE; None (square) when the median height/width is within 1.5 of 1.
    Squashing a 1250 x 500 image to a square shrinks its height 2.5 times more than its width, so a thin defect
    across the long side vanishes first; at the image's own aspect both sides shrink alike. The median, not the
    mean: a set that mixes tall and wide images (magnetic tile: median 1.19) stays square."""
    aspect = float(np.median([h / w for h, w in sizes]))
    if 1 / ASPECT_MIN < aspect < ASPECT_MIN:
        return None
    r = math.sqrt(aspect)
    return tuple(max(SHAPE_MULTIPLE, round(size * f / SHAPE_MULTIPLE) * SHAPE_MULTIPLE) for f in (r, 1 / r))


def split_dataset(
    cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, cache: bool
) -> SegmentationDataset | WithReference:
    """One split's training dataset: images at the training size, or at native size in crop mode (each epoch
    then draws `RandomCrops` from them); in reference mode each image gets its reference (a file, or per group
    the first defect-free image of `pool`, the training samples)."""
    if cfg.data.crop and cfg.data.reference:
        raise ValueError(
            "crop training does not support reference mode yet; drop data.crop (resize training) or data.reference"
        )
    size = None if cfg.data.crop else C.resize_hw(cfg.data)
    ds, refs = split_images(cfg, spec, samples, pool, size, cache)
    return ds if refs is None else WithReference(ds, refs)


def epoch_order(
    n: int, defective: Sequence[bool] | None, share: float | None, gen: torch.Generator, draws: int | None = None
) -> list[int]:
    """The draws of one epoch from a set of n images: a permutation of range(n), or, with `share`, at least
    round(share * draws) draws of defective images and the rest of defect-free ones (each group permuted, repeated
    as needed), shuffled together: rare defects are seen as often as asked without dropping any defect-free image
    more than the count requires. `share` is a floor: where defective images already make up more of the split,
    the epoch is a permutation. draws (default n): more than n repeats the set in fresh permutations (a
    step-counted run on a tiny set draws it several times per epoch)."""
    m = n if draws is None else draws
    if not n:
        return []

    def draw(pool: list[int], k: int) -> list[int]:
        reps = -(-k // len(pool))
        return [pool[j] for r in range(reps) for j in torch.randperm(len(pool), generator=gen).tolist()][:k]

    pos = [] if defective is None else [i for i in range(n) if defective[i]]
    if share is None or not pos or len(pos) == n:
        return draw(list(range(n)), m)
    neg = [i for i in range(n) if not defective[i]]
    k = max(round(share * m), min(len(pos), m))  # a floor: never fewer defective draws than the split holds
    picks = draw(pos, k) + draw(neg, m - k)
    return [picks[j] for j in torch.randperm(m, generator=gen).tolist()]


def load_run_data(cfg: C.RunConfig, run_dir: Path, resumed: bool, main: bool = True) -> RunData:
    """Load the dataset, fix the split (written to run_dir/split.json by the main process), pick the training
    samples the config asks for, build the training and evaluation sets and read every file once (`check_files`).
    With data.keep_aspect, cfg.data.shape is chosen here (and config.yaml rewritten)."""
    spec = load_dataset(
        cfg.data.root,
        cfg.data.format,
        skip_bad=cfg.data.skip_bad,
        allow_unlabeled=cfg.data.allow_unlabeled,
        mask_rule=cfg.data.mask_rule,
    )
    # Only a resumed run keeps the split.json in its folder: one left by a failed start of a fresh run must
    # not override --split-file or the seeded split.
    split = prepare_split(cfg, spec, run_dir if resumed else None)
    if main:
        save_split(
            run_dir / "split.json",
            split,
            seed=cfg.train.seed,
            fractions=list(cfg.data.fractions),
            data=str(cfg.data.root),
        )
    pool = select(spec, split.get("train", []))
    train = _training_samples(cfg, pool)
    if cfg.data.keep_aspect and cfg.data.shape is None and not cfg.data.crop and train:
        # headers only, of at most 200 images (seeded): the aspect of the training split
        picks = random.Random(0).sample(train, min(len(train), 200))
        cfg.data.shape = aspect_shape([image_size(s.image) for s in picks], cfg.data.size)
        if cfg.data.shape and main:  # the config in the folder says what training used
            C.save_yaml(cfg, run_dir / "config.yaml")
    train_set = split_dataset(cfg, spec, train, pool, cfg.data.cache)
    if len(train_set) == 0:
        raise ValueError(f"the training split of {cfg.data.root} is empty; check the data folder and split file")
    defective = None
    if cfg.data.defective_share is not None:  # decodes (and caches) every training mask once
        ds = getattr(train_set, "dataset", train_set)
        defective = [bool(defect_pixels(ds.arrays(i)[1]).any()) for i in range(len(ds))]
    eval_sets = {
        name: eval_set(cfg, spec, select(spec, split.get(name, [])), pool, cfg.data.cache) for name in ("val", "test")
    }
    sets = {"train": getattr(train_set, "dataset", train_set), **{n: ev.dataset for n, ev in eval_sets.items()}}
    skipped = check_files(sets, spec, cfg.data.skip_bad)
    counts = split_counts(spec, split)
    if cfg.train.task == "segment" and main:  # said before the first epoch: what this run can measure
        for line in split_warnings(counts):
            print(f"warning: {line}", file=sys.stderr, flush=True)
    return RunData(spec, split, train_set, defective, eval_sets, skipped, counts)


def _training_samples(cfg: C.RunConfig, pool: list) -> list:
    """The training split's samples the config trains on: all, the defective ones (data.defective_only), none of the
    defective ones (data.defect_free_only), or a seeded few of them (data.defective_images)."""
    train = pool if not cfg.data.defective_only else [s for s in pool if s.defective is not False]
    if cfg.data.defect_free_only or cfg.data.defective_images is not None:
        # a layout that cannot tell a good image from a defective one needs the masks decoded here
        train = [with_known_defect(s) for s in train]
        bad = [s for s in train if s.defective is not False]
        keep = 0 if cfg.data.defect_free_only else min(cfg.data.defective_images, len(bad))
        chosen = set(random.Random(cfg.train.seed).sample(range(len(bad)), keep))  # seeded: the same k images
        train = [s for s in train if s.defective is False] + [s for i, s in enumerate(bad) if i in chosen]
        if not train:
            raise ValueError("the training split holds no defect-free image to train on (data.defect_free_only)")
    return train


def check_files(sets: dict[str, SegmentationDataset], spec: DatasetSpec, skip_bad: bool) -> list[tuple[str, str]]:
    """Read every sample of every split before the first epoch, so a truncated test image fails now and not
    after the training: a full decode (which fills the cache evaluation uses anyway) for splits of up to
    CHECK_DECODE_LIMIT samples, the headers only for larger ones. With data.skip_bad the datasets have
    decoded every sample and dropped (and listed) the bad ones already; here they are reported. Returns the
    skipped files (file, why)."""
    if skip_bad:
        skipped = [
            *spec.skipped,
            *((p, f"{name} split: {why}") for name, ds in sets.items() for p, why in getattr(ds, "skipped", [])),
        ]
        for p, why in skipped:
            print(f"skipped {p}: {why}", file=sys.stderr, flush=True)
        return skipped
    bad = []
    for name, ds in sets.items():
        for i, smp in enumerate(ds.samples):
            try:
                if len(ds.samples) <= CHECK_DECODE_LIMIT:
                    ds.arrays(i)
                else:
                    image_size(smp.image)
                    if smp.mask is not None:
                        image_size(smp.mask)
            except ValueError as exc:
                bad.append(f"  {name} split: {exc}")
    if bad:
        raise ValueError(
            f"{len(bad)} samples cannot be read:\n"
            + "\n".join(bad[:10])
            + ("\n  ..." if len(bad) > 10 else "")
            + "\nreplace or remove them, or pass --skip-bad to skip them (each is listed, and in report.md)"
        )
    return list(spec.skipped)
