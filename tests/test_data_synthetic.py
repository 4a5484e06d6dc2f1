"""Synthetic generator: deterministic, exact masks, visible defects, DAGM layout, speed."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from defectseg.data import load_dataset, load_pair, make_split
from defectseg.data.synthetic import DEFECTS, TEXTURES, generate, generate_sample, write_dagm


def test_deterministic_per_seed():
    a = generate(12, size=64, seed=5)
    b = generate(12, size=64, seed=5)
    c = generate(12, size=64, seed=6)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    # sample i does not depend on n
    assert np.array_equal(generate(3, size=64, seed=5)[2][0], a[2][0])


def test_defective_fraction_and_classes():
    data = generate(70, size=64, seed=0)
    assert sum(int(m.any()) for _, m, _ in data) == 10  # 1 in 7, per class
    assert {t for _, _, t in data} == set(TEXTURES)
    assert generate(14, size=64, defective_fraction=0.5, classes=2)[0][2] == "noise"
    assert sum(int(m.any()) for _, m, _ in generate(14, size=64, defective_fraction=0.5, classes=2)) == 8


@pytest.mark.parametrize("texture", range(10))
def test_defects_visible_and_masks_exact(texture):
    for kind in DEFECTS:
        seed = texture * 10 + DEFECTS.index(kind)
        img, mask = generate_sample(seed, texture, size=128, defective=True, defect_kind=kind)
        assert img.dtype == np.uint8 and img.shape == (128, 128) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        n = int(mask.sum())
        assert 4 <= n <= (128 / 6) ** 2 * 1.6, (kind, n)
        # exact masks: the same seed without the defect gives identical pixels outside the mask, and
        # the masked pixels changed by a visible amount
        clean, empty = generate_sample(seed, texture, size=128, defective=False)
        assert empty.sum() == 0
        diff = np.abs(img.astype(int) - clean.astype(int))
        assert (diff[mask == 0] == 0).all()
        assert (diff[mask == 1] >= 20).mean() > 0.95, (TEXTURES[texture], kind)


def test_sizes_span_few_pixels_to_a_sixth():
    sizes = []
    for i in range(60):
        _, m = generate_sample(i, i % 10, size=256, defective=True)
        n, _, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        sizes += [max(st[k, cv2.CC_STAT_WIDTH], st[k, cv2.CC_STAT_HEIGHT]) for k in range(1, n)]
    assert min(sizes) < 256 / 20 and max(sizes) > 256 / 8 and max(sizes) <= 256 / 3


def test_fast_enough():
    generate_sample(0, 1, size=256, defective=True)
    t = time.perf_counter()
    for k in range(10):
        generate_sample(k, k, size=256, defective=k % 2 == 0)
    assert (time.perf_counter() - t) / 10 < 0.05  # ~5 ms each on a laptop core; generous for CI


def test_write_dagm_roundtrip(tmp_path):
    root = write_dagm(tmp_path / "s", n_per_class=14, size=64, classes=3, seed=1)
    spec = load_dataset(root)
    assert spec.format == "dagm" and len(spec.samples) == 42
    assert sorted({s.group for s in spec.samples}) == ["Class1", "Class2", "Class3"]
    assert sum(s.defective for s in spec.samples) == 6
    train = [s for s in spec.samples if s.split == "train"]
    assert len(train) == 21 and sum(s.defective for s in train) == 3  # stratified Train/Test
    for s in spec.samples:
        if s.defective:
            _, m = load_pair(s, 1, 2)
            assert m.any()
    lines = (root / "Class1" / "Train" / "Label" / "Labels.txt").read_text().splitlines()
    assert lines[0] == "1" and len(lines) == 8 and len(lines[1].split("\t")) == 5
    split = make_split(spec, seed=0)
    assert len(split["test"]) == 21 and len(split["val"]) > 0
    again = write_dagm(tmp_path / "t", n_per_class=14, size=64, classes=3, seed=1)
    assert (again / "Class2/Test/0003.PNG").read_bytes() == (root / "Class2/Test/0003.PNG").read_bytes()


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_sample(0, 10)
    with pytest.raises(ValueError):
        generate(4, classes=11)
