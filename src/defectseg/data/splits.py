"""Seeded, stratified train/val/test splits over sample keys, saved as JSON and reused.

Stratum = (sample.group, sample.defective), the latter read from the mask where the layout leaves it unknown.
Within each stratum (keys sorted, then shuffled with the seed)
round(n * f_val) go to val, round(n * f_test) to test and the rest to train, so the split does not depend
on the order samples come in. Dataset-given splits (`sample.split`) are kept; a split the dataset lacks is
carved out of its train part (e.g. DAGM Train/Test -> val carved from Train, seeded and stratified).

File format (same as shared/data/magnetic-tile/split-70-15-15.json):
`{"seed": 0, "fractions": [0.7, 0.15, 0.15], ...info, "train": [keys], "val": [...], "test": [...]}`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from .formats import DatasetSpec, Sample
from .io import read_mask

SPLITS = ("train", "val", "test")


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _stratum(s: Sample) -> str:
    return f"{s.group}|{s.defective}"


def with_known_defect(s: Sample) -> Sample:
    """`s` with `defective` known: a layout that gives a mask file for every image (the generic one) cannot
    tell a defect-free image from a defective one until the mask is decoded, and a split stratified on
    "unknown" can leave validation without a single defective image."""
    if s.defective is not None or s.mask is None:
        return s
    try:
        return dataclasses.replace(s, defective=bool(read_mask(s.mask, s.mask_rule).any()))
    except ValueError:
        return s  # unreadable: the training's file check reports it (or --skip-bad lists it)


def _stratified(samples: Sequence[Sample], fractions: dict[str, float], seed: int, salt: str) -> dict[str, list[str]]:
    """Split samples among the names of `fractions` (the first name takes the remainder)."""
    names = list(fractions)
    total = sum(fractions.values())
    out: dict[str, list[str]] = {n: [] for n in names}
    strata: dict[str, list[str]] = {}
    for s in samples:
        strata.setdefault(_stratum(s), []).append(s.key)
    for name in sorted(strata):
        keys = sorted(strata[name])
        random.Random(f"{seed}|{salt}|{name}").shuffle(keys)
        n, start = len(keys), 0
        counts = {}
        for part in names[1:]:
            counts[part] = min(_round(n * fractions[part] / total), n - sum(counts.values()))
        for part in names[1:]:
            out[part] += keys[start : start + counts[part]]
            start += counts[part]
        out[names[0]] += keys[start:]
    return {k: sorted(v) for k, v in out.items()}


def make_split(
    samples: Sequence[Sample] | DatasetSpec, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """{"train","val","test"} -> sorted sample keys; see the module docstring."""
    if isinstance(samples, DatasetSpec):
        samples = samples.samples
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    frac = dict(zip(SPLITS, (float(f) for f in fractions)))
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"duplicated sample keys {dup}: every image must have a unique path")
    given = [with_known_defect(s) for s in samples if s.split is not None]
    free = [with_known_defect(s) for s in samples if s.split is None]
    out = {k: [] for k in SPLITS}
    if free:
        for k, v in _stratified(free, frac, seed, "free").items():
            out[k] += v
    if given:
        bad = sorted({s.split for s in given} - set(SPLITS))
        if bad:
            raise ValueError(f"unknown dataset split names {bad}; expected train, val or test")
        present = {s.split for s in given}
        by = {k: [s for s in given if s.split == k] for k in SPLITS}
        missing = [k for k in ("val", "test") if k not in present]
        if missing and by["train"]:
            parts = {"train": frac["train"], **{k: frac[k] for k in missing}}
            carved = _stratified(by["train"], parts, seed, "carve")
            for k, v in carved.items():
                out[k] += v
        else:
            out["train"] += [s.key for s in by["train"]]
        for k in ("val", "test"):
            out[k] += [s.key for s in by[k]]
    return {k: sorted(v) for k, v in out.items()}


def save_split(path: str | Path, split: dict[str, list[str]], **info) -> Path:
    """Write the split as JSON ({"seed":..., "fractions":..., **info, "train":..., "val":..., "test":...})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"seed": info.pop("seed", None), "fractions": list(info.pop("fractions", []) or []), **info}
    data.update({k: list(split.get(k, [])) for k in SPLITS})
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load_split(path: str | Path) -> dict[str, list[str]]:
    """Read a split file -> {"train","val","test"} -> keys (missing parts are empty)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read split file ({exc})") from None
    if not isinstance(data, dict) or not any(k in data for k in SPLITS):
        raise ValueError(f"{path}: not a split file (needs 'train', 'val', 'test' lists of image paths)")
    out = {k: [str(x) for x in data.get(k, [])] for k in SPLITS}
    seen: dict[str, str] = {}
    for k, keys in out.items():
        for key in keys:
            if key in seen:
                raise ValueError(f"{path}: {key!r} is in both {seen[key]!r} and {k!r}")
            seen[key] = k
    return out


def select(spec_or_samples: DatasetSpec | Iterable[Sample], keys: Sequence[str]) -> list[Sample]:
    """Samples for keys, in key order; ValueError listing keys that are not in the dataset."""
    samples = spec_or_samples.samples if isinstance(spec_or_samples, DatasetSpec) else list(spec_or_samples)
    index = {s.key: s for s in samples}
    missing = [k for k in keys if k not in index]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ValueError(
            f"{len(missing)} split key(s) not found in the dataset: {shown}; the split file "
            "belongs to another dataset or files were removed: delete split.json to draw a new split"
        )
    return [index[k] for k in keys]
