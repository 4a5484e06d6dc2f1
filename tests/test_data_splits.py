"""Splits: determinism, stratification, dataset-given splits, save/load, select."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defectseg.cli import app
from defectseg.data import Sample, load_dataset, load_split, make_split, save_split, select
from defectseg.data.io import write_png
from defectseg.data.splits import largest_remainder, split_counts, split_warnings


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


def test_largest_remainder_sums_to_the_total():
    assert largest_remainder(392, (0.7, 0.15, 0.15)) == [274, 59, 59]
    assert largest_remainder(952, (0.7, 0.15, 0.15)) == [666, 143, 143]
    assert largest_remainder(3, (0.7, 0.15, 0.15)) == [2, 1, 0]  # make_split then promises test one too
    assert largest_remainder(0, (0.7, 0.15, 0.15)) == [0, 0, 0]


def _parts_layout(root: Path, folders: int, per: int, defective_in) -> Path:
    """A generic layout: images/<part>/<i>.png + masks/<part>/<i>.png; defective_in(part) defective images first."""
    rng = np.random.default_rng(0)
    for f in range(folders):
        for i in range(per):
            write_png(root / "images" / f"kos{f:02d}" / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
            mask = np.zeros((16, 16), np.uint8)
            if i < defective_in(f):
                mask[4:8, 4:8] = 255
            write_png(root / "masks" / f"kos{f:02d}" / f"{i}.png", mask)
    return root


def test_parts_stay_whole_and_val_and_test_get_defects(tmp_path):
    # 50 folders of 8 images, one or two defective in each (52 in all): the layout whose val and test once held
    # no defective image, with one part's images spread over all three splits
    root = _parts_layout(tmp_path / "parts", 50, 8, lambda f: 2 if f < 2 else 1)
    spec = load_dataset(root)
    assert {s.part for s in spec.samples} == {f"kos{f:02d}" for f in range(50)}
    for seed in range(5):
        split = make_split(spec, (0.7, 0.15, 0.15), seed=seed)
        where = {k: name for name, keys in split.items() for k in keys}
        for f in range(50):  # every part in one split
            assert len({where[f"images/kos{f:02d}/{i}.png"] for i in range(8)}) == 1, (seed, f)
        counts = split_counts(spec, split)
        assert [counts[k]["defective"] for k in ("train", "val", "test")] in ([36, 8, 8], [37, 8, 7], [37, 7, 8])
        assert sum(c["parts"] for c in counts.values()) == 50 and min(c["parts"] for c in counts.values()) >= 7
        assert not split_warnings(counts)
    alone = make_split(spec, (0.7, 0.15, 0.15), seed=0, keep_parts=False)
    where = {k: name for name, keys in alone.items() for k in keys}
    assert any(len({where[f"images/kos{f:02d}/{i}.png"] for i in range(8)}) > 1 for f in range(50))


def test_three_defective_images_give_val_and_test_one_each():
    s = samples((("A", 40, 3),))
    split = make_split(s, (0.7, 0.15, 0.15), seed=0)
    counts = split_counts(s, split)
    assert [counts[k]["defective"] for k in ("train", "val", "test")] == [1, 1, 1]
    two = split_counts(samples((("A", 40, 2),)), make_split(samples((("A", 40, 2),)), seed=0))
    lines = split_warnings(two)
    assert any("has no defective image" in x for x in lines) and "2 defective image(s) in all" in lines[-1]
    none = split_warnings(split_counts(samples((("A", 20, 0),)), make_split(samples((("A", 20, 0),)))))
    assert len(none) == 1 and "holds no defective image" in none[0]


def test_data_split_prints_and_writes_the_split(tmp_path):
    root = _parts_layout(tmp_path / "parts", 10, 4, lambda f: 1)
    out = tmp_path / "split.json"
    res = CliRunner().invoke(app, ["data", "split", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    split = load_split(out)
    counts = split_counts(load_dataset(root), split)
    for name in ("train", "val", "test"):
        c = counts[name]
        assert re.search(rf"{name}\s*│\s*{c['images']}\s*│\s*{c['defective']}\s*│\s*{c['parts']}", res.output)
    again = CliRunner().invoke(app, ["data", "split", str(root), "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
