"""Seeded train/val/test splits over sample keys that keep a part together and balance defects, saved as JSON.

A layout says two things about an image: its `part` (kept together: the images of one physical part, lot or
camera session never straddle splits; "" = the image alone) and its `group` (balanced across splits: a defect type
or texture class). The split deals whole parts:

1. Targets over the whole set, by largest remainder: the defective images and the defect-free ones each divided
   by the fractions (per-stratum rounding would give one defective image in a folder to no split but train). With
   three or more defective images, val and test are promised at least one each (when their fraction is not 0).
2. Parts are shuffled within their group (seeded, keys sorted first: the order samples come in does not matter),
   the groups one after another. The parts with defective images are dealt first, each to the split furthest
   behind its defective target as a share of that target, then the defect-free parts likewise: the dealer spreads
   each split evenly along the sequence, so each group's run of parts gets its share to within one.

Dataset-given splits (`sample.split`) are kept; a split the dataset lacks is carved out of its train part the same
way (e.g. DAGM Train/Test -> val carved from Train). `defective` is read from the mask where the layout leaves it
unknown.

File format (same as shared/data/magnetic-tile/split-70-15-15.json):
`{"seed": 0, "fractions": [0.7, 0.15, 0.15], ...info, "train": [keys], "val": [...], "test": [...]}`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from .formats import DatasetSpec, Sample
from .io import read_mask

SPLITS = ("train", "val", "test")
# What data.fractions and `data split --fractions` accept (`valid_fractions`).
FRACTIONS_RULE = "three non-negative fractions (train, val, test) summing to 1"


def valid_fractions(fractions: Sequence[float]) -> bool:
    """Whether `fractions` meet FRACTIONS_RULE."""
    return len(fractions) == 3 and all(f >= 0 for f in fractions) and abs(sum(fractions) - 1) <= 1e-6


def with_known_defect(s: Sample) -> Sample:
    """`s` with `defective` known: a layout that gives a mask file for every image (the generic one) cannot
    tell a defect-free image from a defective one until the mask is decoded, and a split stratified on
    "unknown" can leave validation without a single defective image."""
    if s.defective is not None or s.mask is None:
        return s
    try:
        return dataclasses.replace(s, defective=_has_defect(s.mask, s.mask_rule, s.mask.stat().st_mtime_ns))
    except (ValueError, OSError):
        return s  # unreadable: the training's file check reports it (or --skip-bad lists it)


@functools.lru_cache(maxsize=1 << 16)
def _has_defect(mask: Path, rule: str, mtime_ns: int) -> bool:
    """Whether a mask file (as of mtime_ns) holds a defect pixel: one decode per file and version, though a run asks
    for the split, its counts and its training choice."""
    return bool(read_mask(mask, rule).any())


def largest_remainder(total: int, fractions: Sequence[float]) -> list[int]:
    """`total` divided in proportion to `fractions` in whole numbers that sum to it: each share rounded down, the
    rest one each to the largest remainders (ties to the earlier)."""
    whole = sum(fractions)
    exact = [total * f / whole for f in fractions]
    out = [math.floor(x) for x in exact]
    for i in sorted(range(len(out)), key=lambda i: (out[i] - exact[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


@dataclasses.dataclass
class _Part:
    keys: list[str]
    group: str
    defective: int  # images with a defect (unknown counts as defective: it has a mask)


def _part_key(s: Sample, keep_parts: bool = True) -> str:
    """What a split keeps together with `s`: its part, or the image alone."""
    return f"part|{s.part}" if keep_parts and s.part else f"image|{s.key}"


def _parts(samples: Sequence[Sample], keep_parts: bool) -> list[_Part]:
    by: dict[str, _Part] = {}
    for s in sorted(samples, key=lambda s: s.key):
        p = by.setdefault(_part_key(s, keep_parts), _Part([], s.group, 0))
        p.keys.append(s.key)
        p.defective += s.defective is not False
    return list(by.values())


def _deal(
    samples: Sequence[Sample], fractions: dict[str, float], seed: int, salt: str, keep_parts: bool
) -> dict[str, list[str]]:
    """Split samples among the names of `fractions` (module docstring)."""
    names = list(fractions)
    parts = _parts(samples, keep_parts)
    groups: dict[str, list[_Part]] = {}
    for p in parts:
        groups.setdefault(p.group, []).append(p)
    dealt: list[_Part] = []
    for g in sorted(groups):
        random.Random(f"{seed}|{salt}|{g}").shuffle(groups[g])
        dealt += groups[g]
    bad = sum(p.defective for p in parts)
    good = sum(len(p.keys) for p in parts) - bad
    want_bad = dict(zip(names, largest_remainder(bad, fractions.values())))
    if bad >= 3:  # a defect to choose the threshold on and one to test on, taken from the largest share
        for name in names[1:]:
            if fractions[name] > 0 and want_bad[name] == 0:
                want_bad[max(want_bad, key=want_bad.get)] -= 1
                want_bad[name] = 1
    want_good = dict(zip(names, largest_remainder(good, fractions.values())))
    got_bad, got_good = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    out: dict[str, list[str]] = {n: [] for n in names}

    def behind(want: dict[str, int], got: dict[str, int]) -> str:
        open_ = [n for n in names if want[n] > 0] or names[:1]
        return max(open_, key=lambda n: (want[n] - got[n]) / max(want[n], 1))  # ties: the earlier name

    for p in (p for p in dealt if p.defective):
        name = behind(want_bad, got_bad)
        out[name] += p.keys
        got_bad[name] += p.defective
        got_good[name] += len(p.keys) - p.defective
    for p in (p for p in dealt if not p.defective):
        name = behind(want_good, got_good)
        out[name] += p.keys
        got_good[name] += len(p.keys)
    return {k: sorted(v) for k, v in out.items()}


def make_split(
    samples: Sequence[Sample] | DatasetSpec,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    keep_parts: bool = True,
) -> dict[str, list[str]]:
    """{"train","val","test"} -> sorted sample keys; see the module docstring. keep_parts=False deals every image
    on its own (a layout's part folders balanced across splits instead)."""
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
        for k, v in _deal(free, frac, seed, "free", keep_parts).items():
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
            carved = _deal(by["train"], parts, seed, "carve", keep_parts)
            for k, v in carved.items():
                out[k] += v
        else:
            out["train"] += [s.key for s in by["train"]]
        for k in ("val", "test"):
            out[k] += [s.key for s in by[k]]
    return {k: sorted(v) for k, v in out.items()}


def split_counts(samples: Sequence[Sample] | DatasetSpec, split: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """{"train","val","test"} -> {"images", "defective", "parts"} of a split (masks decoded where the layout leaves
    `defective` unknown; an unreadable mask counts as defective; parts: images with a `part` count by part, the
    rest one each)."""
    samples = samples.samples if isinstance(samples, DatasetSpec) else samples
    index = {s.key: s for s in samples}
    out = {}
    for name in SPLITS:
        chosen = [with_known_defect(index[k]) for k in split.get(name, []) if k in index]
        parts = {_part_key(s) for s in chosen}
        out[name] = {
            "images": len(chosen),
            "defective": sum(s.defective is not False for s in chosen),
            "parts": len(parts),
        }
    return out


def describe_split(counts: dict[str, dict[str, int]]) -> str:
    """One line: "train 280 images (36 defective) in 35 parts, val ..." (parts only where a part holds several)."""
    return ", ".join(
        f"{name} {c['images']} images ({c['defective']} defective)"
        + (f" in {c['parts']} parts" if c["parts"] != c["images"] else "")
        for name, c in counts.items()
    )


def split_warnings(counts: dict[str, dict[str, int]]) -> list[str]:
    """What a segmentation run on this split cannot measure, one message each (empty when it can measure all)."""
    if not any(c["defective"] for c in counts.values()):
        return [
            "the data holds no defective image: the model learns what good parts look like but defect IoU, image "
            "AUROC and the val-f1 threshold cannot be measured (val-frr still sets the threshold on good images); "
            "add images with defect masks, or learn from good images with made defects (--set "
            "data.defect_free_only=true --set data.synthetic_defects=0.5)"
        ]
    out = []
    costs = {  # (what an empty split costs, what one without defects costs)
        "val": (
            "best.pt follows the training loss and the threshold is not chosen",
            "best.pt and the threshold would be chosen on nothing",
        ),
        "test": ("the report has no test figures", "the test figures would say nothing about defects"),
    }
    for name, (empty, blind) in costs.items():
        n = counts[name]["images"]
        if not n:
            out.append(f"the {name} split is empty: {empty}")
        elif not counts[name]["defective"]:
            out.append(f"the {name} split has no defective image among its {n}: {blind}")
    if out and not counts["train"]["defective"]:
        out.append("the training split has no defective image: the model cannot learn what a defect looks like")
    if out:
        total = sum(c["defective"] for c in counts.values())
        out.append(
            f"the set holds {total} defective image(s) in all: add defective images, or give more of them to val and "
            "test (data.fractions, --split-file; parts are kept whole, data.keep_parts=false deals images alone)"
        )
    return out


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
