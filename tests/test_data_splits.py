"""Splits: determinism, stratification, dataset-given splits, save/load, select."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectseg.data import Sample, load_split, make_split, save_split, select


def samples(groups=(("A", 100, 20), ("B", 60, 0), ("C", 35, 7)), split=None, root=Path("/d")):
    out = []
    for g, n, n_def in groups:
        for i in range(n):
            d = i < n_def
            out.append(
                Sample(
                    root / g / f"{i:03d}.png",
                    root / g / f"{i:03d}_m.png" if d else None,
                    "gt127",
                    g,
                    split,
                    defective=d,
                    root=root,
                )
            )
    return out


def test_deterministic_and_order_independent():
    s = samples()
    a = make_split(s, seed=1)
    assert a == make_split(list(reversed(s)), seed=1)
    assert a != make_split(s, seed=2)
    keys = [k for part in a.values() for k in part]
    assert sorted(keys) == sorted(x.key for x in s) and len(set(keys)) == len(keys)


def test_stratified():
    s = samples()
    split = make_split(s, fractions=(0.7, 0.15, 0.15), seed=0)
    by_key = {x.key: x for x in s}
    for part, expected in (
        ("val", {("A", True): 3, ("A", False): 12, ("B", False): 9, ("C", True): 1, ("C", False): 4}),
    ):
        counts: dict = {}
        for k in split[part]:
            x = by_key[k]
            counts[(x.group, x.defective)] = counts.get((x.group, x.defective), 0) + 1
        assert counts == expected
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == len(s)
    assert len(split["test"]) == len(split["val"])


def test_reference_counts_like_magnetic_tile():
    groups = (
        ("MT_Blowhole", 115, 115),
        ("MT_Break", 85, 85),
        ("MT_Crack", 57, 57),
        ("MT_Fray", 32, 32),
        ("MT_Uneven", 103, 103),
        ("MT_Free", 952, 0),
    )
    split = make_split(samples(groups), seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] == [940, 202, 202]


def test_given_splits_respected_and_val_carved():
    s = samples((("A", 40, 10),), split="train") + [
        Sample(Path(f"/d/T/{i}.png"), None, "gt127", "A", "test", root=Path("/d")) for i in range(10)
    ]
    split = make_split(s, seed=0)
    assert sorted(split["test"]) == sorted(f"T/{i}.png" for i in range(10))
    assert len(split["val"]) == round(30 * 0.15 / 0.85) + round(10 * 0.15 / 0.85)
    assert all(k.startswith("A/") for k in split["val"])
    assert split == make_split(s, seed=0)
    full = [
        Sample(Path(f"/d/{p}/{i}.png"), None, "gt127", "n", p, root=Path("/d"))
        for p, n in (("train", 5), ("val", 3), ("test", 2))
        for i in range(n)
    ]
    split = make_split(full, seed=4)
    assert [len(split[k]) for k in ("train", "val", "test")] == [5, 3, 2]


def test_save_load_roundtrip(tmp_path):
    split = make_split(samples(), seed=0)
    p = save_split(tmp_path / "run" / "split.json", split, seed=0, fractions=(0.7, 0.15, 0.15), dataset="x")
    data = json.loads(p.read_text())
    assert data["seed"] == 0 and data["fractions"] == [0.7, 0.15, 0.15] and data["dataset"] == "x"
    assert load_split(p) == split
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["a"], "test": ["a"]}))
    with pytest.raises(ValueError, match="both"):
        load_split(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="cannot read split file"):
        load_split(bad)


def test_select():
    s = samples()
    keys = [s[5].key, s[0].key]
    assert select(s, keys) == [s[5], s[0]]
    with pytest.raises(ValueError, match=r"2 split key\(s\) not found.*nope1"):
        select(s, ["nope1", "nope2", s[0].key])


def test_bad_fractions():
    with pytest.raises(ValueError):
        make_split(samples(), fractions=(0.5, 0.5))
