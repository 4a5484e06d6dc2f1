"""Localization and region metrics on hand-drawn masks; every expected value is derived by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectseg.localize import PostProcess, RegionMetrics, box_iou, defects_from_mask, find_defects


def box(d: dict) -> tuple[int, int, int, int]:
    return (d["x1"], d["y1"], d["x2"], d["y2"])


# ---------------------------------------------------------------- components


def test_two_touching_squares_are_one_component_with_mean_and_max_score() -> None:
    prob = np.zeros((6, 7), np.float32)
    prob[1:3, 1:3] = 0.9  # 2x2 square at columns 1-2
    prob[1:3, 3:5] = 0.7  # 2x2 square at columns 3-4, sharing an edge with the first
    (d,) = find_defects(prob)
    # columns 1..4, rows 1..2 -> exclusive box (1, 1, 5, 3); 8 pixels; mean (4*0.9 + 4*0.7)/8 = 0.8
    assert box(d) == (1, 1, 5, 3)
    assert d["area"] == 8 and d["class"] == 1
    assert d["score"] == pytest.approx(0.8, abs=1e-6)
    (d_max,) = find_defects(prob, score="max")
    assert d_max["score"] == pytest.approx(0.9, abs=1e-6)


def test_diagonal_pixels_join_at_8_connectivity_only() -> None:
    prob = np.zeros((4, 4), np.float32)
    prob[1, 1] = prob[2, 2] = 1.0
    (d,) = find_defects(prob, connectivity=8)
    assert box(d) == (1, 1, 3, 3) and d["area"] == 2
    four = find_defects(prob, connectivity=4)
    assert sorted(box(r) for r in four) == [(1, 1, 2, 2), (2, 2, 3, 3)]
    assert [r["area"] for r in four] == [1, 1]


def test_ring_area_excludes_hole_and_box_covers_ring() -> None:
    prob = np.zeros((8, 8), np.float32)
    prob[1:6, 1:6] = 0.8  # 5x5 block at rows/cols 1..5
    prob[2:5, 2:5] = 0.1  # 3x3 hole below threshold
    (d,) = find_defects(prob)
    assert box(d) == (1, 1, 6, 6)
    assert d["area"] == 25 - 9
    assert d["score"] == pytest.approx(0.8, abs=1e-6)  # the hole's 0.1 is not part of the component


def test_empty_map_gives_no_records_and_ok_verdict() -> None:
    prob = np.full((5, 5), 0.2, np.float32)
    empty = PostProcess()(prob)
    assert empty.defects == [] and empty.verdict == "OK" and not empty.mask.any()
    assert empty.score == pytest.approx(0.2)
    assert defects_from_mask(np.zeros((5, 5), np.uint8)) == []
    prob[2, 3] = 0.6
    found = PostProcess()(prob)
    assert found.verdict == "NG" and found.score == pytest.approx(0.6) and found.mask[2, 3] == 1


def test_threshold_is_inclusive() -> None:
    prob = np.zeros((3, 3), np.float32)
    prob[1, 1] = 0.5
    assert len(find_defects(prob, threshold=0.5)) == 1
    assert find_defects(prob, threshold=0.51) == []


def test_min_area_drops_small_components_and_records_sorted_by_score() -> None:
    prob = np.zeros((8, 8), np.float32)
    prob[0, 0] = 0.95  # 1 pixel, highest score
    prob[4:6, 4:6] = 0.6  # 4 pixels
    prob[0:1, 5:8] = 0.7  # 3 pixels
    all_found = find_defects(prob)
    assert [r["area"] for r in all_found] == [1, 3, 4]  # scores 0.95, 0.7, 0.6
    kept = find_defects(prob, min_area=2)
    assert [r["area"] for r in kept] == [3, 4]
    assert find_defects(prob, min_area=5) == []


def test_mean_vs_max_score_on_uneven_component() -> None:
    prob = np.zeros((3, 5), np.float32)
    prob[1, 1:4] = [0.6, 0.9, 0.6]
    assert find_defects(prob, score="mean")[0]["score"] == pytest.approx(0.7, abs=1e-6)
    assert find_defects(prob, score="max")[0]["score"] == pytest.approx(0.9, abs=1e-6)


def test_multiclass_adjacent_classes_give_two_records() -> None:
    h, w = 4, 6
    prob = np.zeros((3, h, w), np.float32)
    prob[0] = 1.0  # background everywhere ...
    # ... except class 1 at columns 1-2 and class 2 right next to it at columns 3-4 (rows 1-2)
    prob[:, 1:3, 1:3] = np.array([0.1, 0.8, 0.1], np.float32)[:, None, None]
    prob[:, 1:3, 3:5] = np.array([0.2, 0.2, 0.6], np.float32)[:, None, None]
    found = find_defects(prob)
    assert len(found) == 2
    by_class = {r["class"]: r for r in found}
    assert box(by_class[1]) == (1, 1, 3, 3) and by_class[1]["area"] == 4
    assert box(by_class[2]) == (3, 1, 5, 3) and by_class[2]["area"] == 4
    # scores are the class's own probability, and class 1 (0.8) comes first
    assert [r["class"] for r in found] == [1, 2]
    assert by_class[2]["score"] == pytest.approx(0.6, abs=1e-6)
    # the threshold applies to the defect probability 1 - p0: 0.9 for class 1, 0.8 for class 2
    assert len(find_defects(prob, threshold=0.75)) == 2
    assert [r["class"] for r in find_defects(prob, threshold=0.85)] == [1]


def test_single_channel_stack_is_binary() -> None:
    prob = np.zeros((1, 3, 3), np.float32)
    prob[0, 1, 1] = 0.9
    (d,) = find_defects(prob)
    assert d["class"] == 1 and box(d) == (1, 1, 2, 2)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="logits"):
        find_defects(np.array([[-3.0, 4.0]], np.float32))
    with pytest.raises(ValueError, match="connectivity"):
        find_defects(np.zeros((2, 2), np.float32), connectivity=6)
    with pytest.raises(ValueError, match="shape"):
        find_defects(np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        find_defects(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="score"):
        find_defects(np.zeros((2, 2), np.float32), score="median")
    with pytest.raises(ValueError, match="integer"):
        defects_from_mask(np.zeros((2, 2), np.float32))


def test_defects_from_mask_per_class_with_score_one_and_ignore_index() -> None:
    mask = np.zeros((5, 6), np.uint8)
    mask[1:3, 1:3] = 1
    mask[1:3, 3] = 2  # touches class 1: separate record
    mask[4, 5] = 255  # "don't care"
    found = defects_from_mask(mask, ignore_index=255)
    assert sorted((r["class"], box(r), r["area"]) for r in found) == [(1, (1, 1, 3, 3), 4), (2, (3, 1, 4, 3), 2)]
    assert all(r["score"] == 1.0 for r in found)
    assert len(defects_from_mask(mask)) == 3  # without ignore_index 255 is a class
    assert [r["class"] for r in defects_from_mask(mask.astype(bool))] == [1, 1]  # 8-connected: two blobs


# ---------------------------------------------------------------- scaling


def test_mask_holds_exactly_the_pixels_of_the_records() -> None:
    """One pass decides both: components below min_area leave the records and the mask together."""
    prob = np.zeros((10, 12), np.float32)
    prob[1:4, 1:4] = 0.9  # 9 pixels: kept
    prob[6, 6:8] = 0.8  # 2 pixels: below min_area 3
    prob[8, 10] = 0.55  # 1 pixel: below min_area 3
    det = PostProcess(threshold=0.5, min_area=3)(prob)
    assert [box(d) for d in det.defects] == [(1, 1, 4, 4)]
    want = np.zeros((10, 12), np.uint8)
    want[1:4, 1:4] = 1
    np.testing.assert_array_equal(det.mask, want)
    assert det.verdict == "NG" and det.score == pytest.approx(0.9)
    # Only small components: no record, an empty mask, an OK verdict; the score still ranks the image.
    small = PostProcess(threshold=0.5, min_area=3)(np.where(want == 1, 0, prob))
    assert small.defects == [] and not small.mask.any() and small.verdict == "OK"
    assert small.score == pytest.approx(0.8)


def test_multiclass_mask_and_score() -> None:
    prob = np.zeros((3, 4, 4), np.float32)
    prob[0] = 1.0
    prob[:, 1, 1] = (0.2, 0.7, 0.1)  # class 1
    prob[:, 2, 3] = (0.4, 0.1, 0.5)  # class 2, defect probability 0.6
    det = PostProcess(threshold=0.5)(prob)
    assert det.mask[1, 1] == 1 and det.mask[2, 3] == 2 and det.mask.sum() == 3
    assert det.score == pytest.approx(0.8)
    # threshold 0.7: only pixels with 1 - p(background) >= 0.7 stay
    assert [d["class"] for d in PostProcess(threshold=0.7)(prob).defects] == [1]


# ---------------------------------------------------------------- box IoU


def test_box_iou_hand_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[0, 0, 10, 8], [5, 0, 15, 10], [20, 20, 21, 21]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    # 80/100; overlap 5x10=50 over 100+100-50=150; disjoint
    np.testing.assert_allclose(iou[0], [0.8, 1 / 3, 0.0])
    # small box inside b0: 4/80; b1 disjoint (x 5..15 vs 0..2)
    np.testing.assert_allclose(iou[1], [4 / 80, 0.0, 0.0])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    assert box_iou(np.array([[3, 3, 3, 5]]), np.array([[3, 3, 3, 5]]))[0, 0] == 0.0  # empty box


# ---------------------------------------------------------------- region metrics


def rec(x1: int, y1: int, x2: int, y2: int, score: float = 1.0, cls: int = 1) -> dict:
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "area": (x2 - x1) * (y2 - y1), "score": score, "class": cls}


G1, G2 = rec(0, 0, 10, 10), rec(20, 20, 30, 30)


def test_perfect_prediction() -> None:
    m = RegionMetrics()
    m.update([rec(0, 0, 10, 10, 0.9)], [G1])
    m.update([rec(20, 20, 30, 30, 0.8), rec(0, 0, 4, 4, 0.7)], [G2, rec(0, 0, 4, 4)])
    r = m.compute()
    for key in ("precision@0.5", "recall@0.5", "f1@0.5", "ap50", "ap"):
        assert r[key] == pytest.approx(1.0), key
    assert (r["n_images"], r["n_gt"], r["n_pred"], r["images_with_gt"], r["count_mae"]) == (2, 3, 3, 2, 0.0)


def test_miss_halves_recall() -> None:
    m = RegionMetrics()
    m.update([rec(0, 0, 10, 10, 0.9)], [G1, G2])
    r = m.compute()
    assert r["recall@0.5"] == 0.5 and r["precision@0.5"] == 1.0
    assert r["f1@0.5"] == pytest.approx(2 / 3)
    # precision 1 up to recall 0.5 (levels 0.00..0.50: 51 of 101), never reaches higher recall
    assert r["ap50"] == pytest.approx(51 / 101)
    assert r["count_mae"] == 1.0


def test_false_positive_scored_above_true_positive() -> None:
    m = RegionMetrics()
    m.update([rec(50, 50, 60, 60, 0.9), rec(0, 0, 10, 10, 0.8)], [G1])
    r = m.compute()
    # ranked: FP (P=0, R=0), TP (P=1/2, R=1); envelope is 1/2 at every recall level
    assert r["precision@0.5"] == 0.5 and r["recall@0.5"] == 1.0
    assert r["ap50"] == pytest.approx(0.5)

    m = RegionMetrics()
    m.update([rec(0, 0, 10, 10, 0.95), rec(50, 50, 60, 60, 0.9), rec(20, 20, 30, 30, 0.8)], [G1, G2])
    # ranked: TP (P=1, R=.5), FP (P=1/2, R=.5), TP (P=2/3, R=1); envelope 1 up to R=.5, then 2/3:
    # 51 levels (0..0.50) at 1, 50 levels (0.51..1) at 2/3
    assert m.compute()["ap50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_ap_uses_the_precision_envelope() -> None:
    g3 = rec(40, 40, 50, 50)
    m = RegionMetrics()
    preds = [rec(0, 0, 10, 10, 0.9), rec(60, 60, 70, 70, 0.8), rec(20, 20, 30, 30, 0.7), rec(40, 40, 50, 50, 0.6)]
    m.update(preds, [G1, G2, g3])
    # ranked TP, FP, TP, TP: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1. The envelope lifts
    # the 2/3 to 3/4, so levels 0.00..0.33 (34) sample 1 and levels 0.34..1.00 (67) sample 3/4.
    assert m.compute()["ap50"] == pytest.approx((34 * 1 + 67 * 0.75) / 101)


def test_duplicate_detection_is_a_false_positive() -> None:
    m = RegionMetrics()
    # listed lower score first: matching must still go by score, so the 0.9 box takes the gt
    m.update([rec(0, 0, 10, 9, 0.8), rec(0, 0, 10, 10, 0.9)], [G1])
    r = m.compute()
    assert r["precision@0.5"] == 0.5 and r["recall@0.5"] == 1.0
    assert r["f1@0.5"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 0))
    # ranked: TP (P=1, R=1), FP (P=1/2, R=1): envelope is 1 at every recall level
    assert r["ap50"] == pytest.approx(1.0)


def test_ap_over_iou_thresholds() -> None:
    m = RegionMetrics()
    m.update([rec(0, 0, 10, 8, 0.9)], [G1])  # IoU 80/100 = 0.8: a hit at 0.50..0.80 (7 of 10 thresholds)
    r = m.compute()
    assert r["ap50"] == 1.0
    assert r["ap"] == pytest.approx(0.7)
    # a threshold list without 0.5 still reports the @0.5 metrics
    m = RegionMetrics(iou_thresholds=[0.9])
    m.update([rec(0, 0, 10, 8, 0.9)], [G1])
    r = m.compute()
    assert r["ap"] == 0.0 and r["ap50"] == 1.0 and r["precision@0.5"] == 1.0


def test_image_without_gt_or_prediction() -> None:
    m = RegionMetrics()
    m.update([], [])
    r = m.compute()
    assert r["n_images"] == 1 and r["n_gt"] == 0 and r["n_pred"] == 0 and r["count_mae"] == 0.0
    for key in ("precision@0.5", "recall@0.5", "f1@0.5", "ap50", "ap"):
        assert math.isnan(r[key]), key
    # combined with a perfect image it changes nothing but the counts
    m.update([rec(0, 0, 10, 10, 0.9)], [G1])
    r = m.compute()
    assert r["ap50"] == 1.0 and r["precision@0.5"] == 1.0 and r["n_images"] == 2 and r["images_with_gt"] == 1


def test_predictions_without_any_gt_and_gt_without_predictions() -> None:
    m = RegionMetrics()
    m.update([rec(0, 0, 5, 5, 0.9)], [])
    r = m.compute()
    assert r["precision@0.5"] == 0.0 and r["f1@0.5"] == 0.0
    assert math.isnan(r["recall@0.5"]) and math.isnan(r["ap50"]) and math.isnan(r["ap"])
    m = RegionMetrics()
    m.update([], [G1])
    r = m.compute()
    assert math.isnan(r["precision@0.5"])
    assert r["recall@0.5"] == 0.0 and r["f1@0.5"] == 0.0 and r["ap50"] == 0.0


def test_class_mismatch_does_not_match() -> None:
    m = RegionMetrics()
    m.update([rec(0, 0, 10, 10, 0.9, cls=2)], [rec(0, 0, 10, 10, cls=1)])
    r = m.compute()
    assert r["precision@0.5"] == 0.0 and r["recall@0.5"] == 0.0
    # AP averages over classes with ground truth (class 1 only): class 1 has no prediction -> 0
    assert r["ap50"] == 0.0 and r["ap50_class1"] == 0.0 and "ap50_class2" not in r


def test_ids_do_not_match_across_images_and_merge() -> None:
    # the prediction for image 1 sits on image 2's ground truth location: no match across images
    a, b = RegionMetrics(), RegionMetrics()
    a.update([rec(20, 20, 30, 30, 0.9)], [G1])
    b.update([], [G2])
    r = a.merge(b).compute()
    assert r["n_images"] == 2 and r["recall@0.5"] == 0.0 and r["precision@0.5"] == 0.0
    assert r["count_mae"] == pytest.approx((0 + 1) / 2)


def test_end_to_end_from_probability_map() -> None:
    gt_mask = np.zeros((12, 12), np.uint8)
    gt_mask[2:5, 2:5] = 1
    gt_mask[8:10, 8:11] = 1
    prob = np.where(gt_mask > 0, 0.9, 0.05).astype(np.float32)
    prob[0, 11] = 0.6  # one-pixel false positive
    m = RegionMetrics()
    m.update(find_defects(prob), defects_from_mask(gt_mask))
    r = m.compute()
    # 2 TPs at 0.9 rank above the FP at 0.6: AP 1, precision 2/3
    assert r["ap"] == 1.0 and r["precision@0.5"] == pytest.approx(2 / 3) and r["recall@0.5"] == 1.0
    m.reset()
    m.update(find_defects(prob, min_area=2), defects_from_mask(gt_mask))
    assert m.compute()["precision@0.5"] == 1.0
