"""Statistics and median-frequency weights on a hand-made case."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from defectseg.data import (
    SegmentationDataset,
    class_pixel_counts,
    dataset_stats,
    load_dataset,
    median_frequency_weights,
)


def test_median_frequency_weights_by_hand():
    # frequencies 0.5, 0.25, 0.25, 0 -> median over present classes = 0.25
    w = median_frequency_weights(np.array([50, 25, 25, 0]))
    np.testing.assert_allclose(w, [0.5, 1.0, 1.0, 0.0])
    w = median_frequency_weights(np.array([90, 10]))  # median of (0.9, 0.1) = 0.5
    np.testing.assert_allclose(w, [0.5 / 0.9, 5.0])
    assert median_frequency_weights(np.zeros(3)).tolist() == [0, 0, 0]


@pytest.fixture
def handmade(tmp_path):
    root = tmp_path / "g"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    # image a: 4x4 all 0, mask: 4 pixels of class 1; image b: 4x4 all 255, mask empty; c: 2x4 of 51, 2 px class 2
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "images" / "a.png")
    m = np.zeros((4, 4), np.uint8)
    m[0] = 1
    Image.fromarray(m).save(root / "masks" / "a.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(root / "images" / "b.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "masks" / "b.png")
    Image.fromarray(np.full((2, 4), 51, np.uint8)).save(root / "images" / "c.png")
    mc = np.zeros((2, 4), np.uint8)
    mc[1, :2] = 2
    Image.fromarray(mc).save(root / "masks" / "c.png")
    (root / "classes.txt").write_text("background\nhole\nstain\n")
    return root


def test_dataset_stats_by_hand(handmade):
    spec = load_dataset(handmade)
    st = dataset_stats(spec)
    assert st["images"] == 3 and st["defective"] == 2 and st["defect_free"] == 1
    assert st["defective_fraction"] == pytest.approx(2 / 3)
    assert st["pixel_counts"] == [34, 4, 2]
    np.testing.assert_allclose(st["pixel_frequency"], [34 / 40, 4 / 40, 2 / 40])
    np.testing.assert_allclose(st["median_frequency_weights"], [0.1 / 0.85, 1.0, 2.0])
    # mean over 40 pixels: 16 * 0 + 16 * 1 + 8 * 0.2
    mean = (16 + 8 * 0.2) / 40
    assert st["mean"][0] == pytest.approx(mean)
    var = (16 * 1 + 8 * 0.04) / 40 - mean**2
    assert st["std"][0] == pytest.approx(np.sqrt(var))
    assert st["sizes"]["distinct"] == 2 and st["sizes"]["height"] == [2, 4, 4]
    assert st["channels"] == 1 and st["class_names"] == ["background", "hole", "stain"]
    assert class_pixel_counts(spec).tolist() == [34, 4, 2]
    ds = SegmentationDataset(spec.samples, num_classes=3)
    assert class_pixel_counts(ds).tolist() == [34, 4, 2]


def test_stats_skip_bad(handmade):
    (handmade / "images" / "b.png").write_bytes(b"garbage")
    spec = load_dataset(handmade)
    with pytest.raises(ValueError, match=r"b\.png"):
        dataset_stats(spec)
    st = dataset_stats(spec, skip_bad=True)
    assert st["images"] == 2 and len(st["skipped"]) == 1 and st["skipped"][0][0].endswith("b.png")
