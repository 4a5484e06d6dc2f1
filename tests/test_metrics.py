"""Metrics: hand-computed tiny cases (incl. all-background and ignore pixels), cross-checks against
torchmetrics over several batches, and the distributed reduce/gather on two gloo ranks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from defectseg.metrics import (
    ConfusionMatrix,
    ImageLevel,
    PixelRanking,
    auroc_score,
    average_precision_score,
    average_ranks,
)


def approx_nan(values, expected) -> None:
    """Lists equal elementwise, NaN matching NaN."""
    assert len(values) == len(expected)
    for v, e in zip(values, expected):
        if math.isnan(e):
            assert math.isnan(v), (values, expected)
        else:
            assert v == pytest.approx(e, rel=1e-9), (values, expected)


# ---------------------------------------------------------------------------------------------- confusion matrix


def test_confusion_matrix_by_hand_with_ignore() -> None:
    target = torch.tensor([[[0, 0, 1], [2, 255, 1]]])
    pred = torch.tensor([[[0, 1, 1], [2, 2, 0]]])  # the ignored pixel's prediction (2) must not count
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    r = cm.compute()
    approx_nan(r["iou"], [1 / 3, 1 / 3, 1.0])
    assert r["miou"] == pytest.approx(5 / 9)
    assert r["defect_iou"] == pytest.approx(2 / 3)  # mean over classes 1 and 2
    approx_nan(r["acc"], [1 / 2, 1 / 2, 1.0])
    assert r["macc"] == pytest.approx(2 / 3)
    approx_nan(r["precision"], [1 / 2, 1 / 2, 1.0])
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    approx_nan(r["dice"], [1 / 2, 1 / 2, 1.0])
    assert r["mean_dice"] == pytest.approx(2 / 3) and r["f1"] == r["mean_dice"]
    assert r["defect_dice"] == pytest.approx(3 / 4)
    assert r["pixels"] == 5


def test_binary_by_hand_and_accumulates_counts_not_batch_means() -> None:
    cm = ConfusionMatrix(2)
    # Batch 1: 4 defect pixels, 3 found. Batch 2: 1 defect pixel, missed, plus a false alarm.
    cm.update(torch.tensor([[[1, 1, 1, 0]]]), torch.tensor([[[1, 1, 1, 1]]]))
    cm.update(torch.tensor([[[0, 1, 0, 0]]]), torch.tensor([[[1, 0, 0, 0]]]))
    assert cm.matrix.tolist() == [[2, 1], [2, 3]]
    r = cm.compute()
    # Defect IoU over the split: 3 / (3 + 1 + 2) = 1/2, not the per-batch mean (3/4 + 0) / 2 = 3/8.
    assert r["defect_iou"] == pytest.approx(1 / 2)
    approx_nan(r["iou"], [2 / 5, 1 / 2])
    assert r["miou"] == pytest.approx(0.45)
    approx_nan(r["acc"], [2 / 3, 3 / 5])
    assert r["pixel_acc"] == pytest.approx(5 / 8)
    approx_nan(r["dice"], [4 / 7, 6 / 9])  # 2TP / (2TP + FP + FN)


def test_all_background_target_and_prediction() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.zeros(2, 3, 3, dtype=torch.long), torch.zeros(2, 3, 3, dtype=torch.long))
    r = cm.compute()
    approx_nan(r["iou"], [1.0, math.nan])  # no defect labelled or predicted: defect IoU undefined
    assert r["miou"] == 1.0
    assert math.isnan(r["defect_iou"]) and math.isnan(r["defect_dice"])
    approx_nan(r["acc"], [1.0, math.nan])
    assert r["macc"] == 1.0 and r["pixel_acc"] == 1.0 and r["mean_dice"] == 1.0
    # A false alarm on the same defect-free image: defect IoU is now defined, and 0.
    cm.update(torch.tensor([[[1]]]), torch.tensor([[[0]]]))
    r = cm.compute()
    assert r["defect_iou"] == 0.0
    assert r["miou"] == pytest.approx((18 / 19 + 0) / 2)


def test_empty_and_absent_classes() -> None:
    cm = ConfusionMatrix(3)
    r = cm.compute()  # nothing counted: everything undefined, nothing crashes
    assert all(math.isnan(v) for v in r["iou"]) and math.isnan(r["miou"]) and math.isnan(r["pixel_acc"])
    cm.update(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, 255]]]))
    r = cm.compute()
    approx_nan(r["iou"], [1.0, 1.0, math.nan])  # class 2 absent from both: left out of the means
    assert r["miou"] == 1.0 and r["defect_iou"] == 1.0


def test_state_dict_reset_and_errors() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]))
    other = ConfusionMatrix(2)
    other.load_state_dict(cm.state_dict())
    assert other.matrix.tolist() == [[0, 0], [1, 1]] and other.matrix.dtype == torch.int64
    cm.reset()
    assert cm.matrix.tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match="outside 0..1"):
        cm.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 2]]]))
    with pytest.raises(ValueError, match="outside 0..1"):
        cm.update(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="same"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="3x3"):
        ConfusionMatrix(3).load_state_dict(other.state_dict())


def test_pixel_metrics_match_torchmetrics() -> None:
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassJaccardIndex,
        MulticlassRecall,
    )

    n = 5  # class 4 never appears: checks the "present in target or prediction" rule for the mean
    tm = {
        "iou": MulticlassJaccardIndex(n, average=None, ignore_index=255),
        "miou": MulticlassJaccardIndex(n, average="macro", ignore_index=255),
        "matrix": MulticlassConfusionMatrix(n, ignore_index=255),
        "acc": MulticlassRecall(n, average=None, ignore_index=255),
        "pixel_acc": MulticlassAccuracy(n, average="micro", ignore_index=255),
        "dice": MulticlassF1Score(n, average=None, ignore_index=255),
    }
    g = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(n)
    for _ in range(4):
        # Skewed class frequencies, like defect masks, and ~10 % ignored pixels.
        target = torch.multinomial(torch.tensor([0.7, 0.15, 0.1, 0.05]), 2 * 9 * 11, True, generator=g)
        target = target.view(2, 9, 11)
        noise = torch.randint(0, 4, (2, 9, 11), generator=g)
        pred = torch.where(torch.rand(2, 9, 11, generator=g) < 0.6, target, noise)
        target[torch.rand(2, 9, 11, generator=g) < 0.1] = 255
        cm.update(pred, target)
        for metric in tm.values():
            metric.update(pred, target)
    ours = cm.compute()
    assert ours["matrix"] == tm["matrix"].compute().tolist()
    ref_iou = tm["iou"].compute().double().numpy()
    assert np.allclose(np.array(ours["iou"][:4]), ref_iou[:4], rtol=1e-6)
    assert math.isnan(ours["iou"][4])  # torchmetrics reports 0 for the absent class; we report undefined
    assert ours["miou"] == pytest.approx(tm["miou"].compute().item(), rel=1e-6)
    assert np.allclose(ours["acc"][:4], tm["acc"].compute().double().numpy()[:4], rtol=1e-6)
    assert ours["macc"] == pytest.approx(float(np.mean(ours["acc"][:4])))
    assert ours["pixel_acc"] == pytest.approx(tm["pixel_acc"].compute().item(), rel=1e-6)
    assert np.allclose(ours["dice"][:4], tm["dice"].compute().double().numpy()[:4], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- logits helpers


# ---------------------------------------------------------------------------------------------- image level


def test_image_level_by_hand() -> None:
    il = ImageLevel()
    il.update(torch.tensor([0.9, 0.8, 0.8]), torch.tensor([True, False, True]))
    il.update(torch.tensor([0.3, 0.1]), torch.tensor([0, 1]))
    r = il.compute(threshold=0.5)
    # Predicted defective: 0.9 (yes), 0.8 (no), 0.8 (yes) -> tp 2, fp 1; 0.3 (no) tn; 0.1 (yes) fn.
    assert (r["tp"], r["fp"], r["tn"], r["fn"], r["images"], r["defective"]) == (2, 1, 1, 1, 5, 3)
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    # Positive/negative pairs: (.9,.8) 1, (.9,.3) 1, (.8,.8) tie 1/2, (.8,.3) 1, (.1,.8) 0, (.1,.3) 0 -> 3.5/6.
    assert r["auroc"] == pytest.approx(3.5 / 6)
    # Thresholds .9: P 1, R 1/3; .8: P 2/3, R 2/3; .3: P 1/2, R 2/3; .1: P 3/5, R 1.
    assert r["ap"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 0 * 1 / 2 + 1 / 3 * 3 / 5)
    assert il.compute(threshold=0.85)["tp"] == 1


def test_image_level_uses_the_decisions_it_is_given() -> None:
    """Evaluation passes the verdicts (any defect record): they, not a score threshold, decide accuracy."""
    il = ImageLevel()
    il.update([0.9, 0.6, 0.2], [True, False, True], predicted=[False, True, True])
    r = il.compute(threshold=0.5)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (1, 1, 0, 1)
    assert r["auroc"] == pytest.approx(0.5)  # the ranking still uses the scores: (.9,.6) 1, (.2,.6) 0
    with pytest.raises(ValueError, match="one decision per image"):
        il.update([0.5], [True], predicted=[True, False])


def test_image_level_single_class_and_empty_are_nan() -> None:
    il = ImageLevel()
    r = il.compute()
    assert r["images"] == 0 and math.isnan(r["accuracy"]) and math.isnan(r["auroc"])
    il.update(torch.tensor([0.2, 0.7]), torch.tensor([False, False]))  # defect-free split
    r = il.compute()
    assert math.isnan(r["auroc"]) and math.isnan(r["ap"])
    assert math.isnan(r["recall"]) and r["precision"] == 0.0 and r["accuracy"] == 0.5 and r["f1"] == 0.0
    only_defects = ImageLevel()
    only_defects.update(torch.tensor([0.2, 0.7]), torch.tensor([True, True]))
    assert math.isnan(only_defects.compute()["auroc"]) and math.isnan(only_defects.compute()["ap"])
    with pytest.raises(ValueError, match="NaN"):
        il.update(torch.tensor([float("nan")]), torch.tensor([True]))
    with pytest.raises(ValueError, match="0/1"):
        il.update(torch.tensor([0.5]), torch.tensor([2]))
    with pytest.raises(ValueError, match="one per image"):
        il.update(torch.tensor([0.5, 0.4]), torch.tensor([True]))
    il.reset()
    assert il.compute()["images"] == 0


def test_average_ranks_ties() -> None:
    assert average_ranks(np.array([0.5, 0.1, 0.5, 0.9, 0.5])).tolist() == [3.0, 1.0, 3.0, 5.0, 3.0]


def test_image_metrics_match_torchmetrics() -> None:
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

    g = torch.Generator().manual_seed(5)
    il, auroc, ap = ImageLevel(), BinaryAUROC(), BinaryAveragePrecision()
    for _ in range(5):
        labels = torch.rand(13, generator=g) < 0.3
        # Rounded scores make ties, within and across classes; defective images score higher on average.
        scores = ((torch.rand(13, generator=g) + 0.4 * labels) / 1.4 * 20).round() / 20
        il.update(scores, labels)
        auroc.update(scores, labels.long())
        ap.update(scores, labels.long())
    r = il.compute()
    assert 0.5 < r["auroc"] < 1.0
    assert r["auroc"] == pytest.approx(auroc.compute().item(), abs=1e-6)
    assert r["ap"] == pytest.approx(ap.compute().item(), abs=1e-6)
    # The functional forms agree with the class, and AUROC is the Mann–Whitney U normalised.
    assert auroc_score(il.scores, il.labels) == r["auroc"] and average_precision_score(il.scores, il.labels) == r["ap"]
    from scipy.stats import mannwhitneyu

    pos, neg = il.scores[il.labels], il.scores[~il.labels]
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert r["auroc"] == pytest.approx(u / (pos.size * neg.size))


# ---------------------------------------------------------------------------------------------- distributed


def _distributed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm, il = ConfusionMatrix(2), ImageLevel()
        if rank == 0:
            cm.update(torch.tensor([[[1, 1, 0]]]), torch.tensor([[[1, 0, 0]]]))
            il.update(torch.tensor([0.9, 0.2]), torch.tensor([True, False]))
        else:  # unequal shard sizes
            cm.update(torch.tensor([[[0, 1]]]), torch.tensor([[[1, 255]]]))
            il.update(torch.tensor([0.4, 0.6, 0.1]), torch.tensor([True, False, False]))
        cm.reduce_distributed()
        il.gather_distributed()
        torch.save(
            {"matrix": cm.matrix, "scores": torch.from_numpy(il.scores), "labels": torch.from_numpy(il.labels)},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_distributed_reduce_and_gather(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # Rank 0 adds [[1, 1], [0, 1]], rank 1 [[0, 0], [1, 0]] (its second pixel is ignored).
        assert got["matrix"].tolist() == [[1, 1], [1, 1]]
        assert got["scores"].tolist() == pytest.approx([0.9, 0.2, 0.4, 0.6, 0.1])
        assert got["labels"].tolist() == [True, False, True, False, False]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_matrix_on_cuda_matches_cpu() -> None:
    g = torch.Generator().manual_seed(6)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, 0] = 255
    pred = torch.randint(0, 3, (2, 8, 8), generator=g)
    cpu, gpu = ConfusionMatrix(3), ConfusionMatrix(3)
    cpu.update(pred, target)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # training scripts may set it; bincount without weights is allowed
    try:
        gpu.update(pred.cuda(), target.cuda())
    finally:
        torch.use_deterministic_algorithms(previous)
    assert gpu.matrix.device.type == "cuda" and gpu.matrix.dtype == torch.int64
    assert gpu.compute()["matrix"] == cpu.compute()["matrix"]


# ---------------------------------------------------------------- PixelRanking


def test_pixel_ranking_hand_computed():
    # Defect pixels at 0.9 and 0.35, background at 0.6, 0.2, 0.2 (one ignored pixel at 0.99 must not count).
    prob = np.array([[0.9, 0.35, 0.6], [0.2, 0.2, 0.99]])
    truth = np.array([[True, True, False], [False, False, False]])
    valid = np.array([[True, True, True], [True, True, False]])
    r = PixelRanking(bins=100)
    r.update(prob, truth, valid)
    out = r.compute()
    # AUROC: pairs (defect > background): 0.9 beats all 3, 0.35 beats the two 0.2 -> 5 of 6.
    assert out["pixel_auroc"] == pytest.approx(5 / 6)
    # AP: at 0.9 precision 1 (recall 1/2); at 0.35 precision 2/3 (recall 1) -> (1 + 2/3) / 2.
    assert out["pixel_ap"] == pytest.approx((1 + 2 / 3) / 2)
    # Best F1: threshold 0.9 gives 2/3; any threshold in (0.2, 0.35] gives 2*2/(2*2+1) = 0.8; the lowest bin
    # edge above the 0.2 background pixels is returned.
    assert out["best_f1"] == pytest.approx(0.8)
    assert out["best_f1_threshold"] == pytest.approx(0.21)
    assert out["best_f1_iou"] == pytest.approx(2 / 3)  # tp 2, fp 1, fn 0


def test_pixel_ranking_matches_exact_scores_and_adds_up():
    rng = np.random.default_rng(0)
    truth = rng.random((2, 40, 50)) < 0.1
    prob = np.floor(np.clip(rng.random((2, 40, 50)) * 0.7 + truth * 0.3, 0, 0.999) * 1000) / 1000 + 1e-6
    whole, parts = PixelRanking(), PixelRanking()
    whole.update(prob.reshape(80, 50), truth.reshape(80, 50))
    for p, t in zip(prob, truth):  # two images accumulate into the same totals
        parts.update(p, t)
    # (aupro aside: stacking the two images joins regions that touch the seam, so its regions differ)
    assert {k: v for k, v in whole.compute().items() if k != "aupro"} == {
        k: v for k, v in parts.compute().items() if k != "aupro"
    }
    out = whole.compute()  # every probability sits inside its own bin: the histogram figures are exact
    assert out["pixel_auroc"] == pytest.approx(auroc_score(prob.ravel(), truth.ravel()))
    assert out["pixel_ap"] == pytest.approx(average_precision_score(prob.ravel(), truth.ravel()))


def test_pixel_ranking_undefined_without_both_kinds_of_pixels():
    r = PixelRanking()
    r.update(np.full((4, 4), 0.3), np.zeros((4, 4), bool))
    assert all(math.isnan(v) for v in r.compute().values())


def test_aupro_by_hand():
    """Two defect regions, A (2 px) and B (4 px), in one row with background between them, bins of 0.1.
    PRO / FPR (6 background px) from the top threshold down: p>=0.9: 0.5 / 0; p>=0.8: 0.5 / 1/6; p>=0.5: 0.75 /
    1/6; p>=0.3: 0.75 / 2/6; ... Area up to FPR 0.3: 0.5 * 1/6 + 0.75 * (0.3 - 1/6) = 0.18333, / 0.3 = 0.61111."""
    prob = np.array([[0.95, 0.55, 0.85, 0.35, 0.05, 0.95, 0.95, 0.15, 0.15, 0.05, 0.05, 0.05]])
    truth = np.array([[1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]], bool)
    r = PixelRanking(bins=10)
    r.update(prob, truth)
    assert r.n_regions == 2
    assert r.compute()["aupro"] == pytest.approx(0.18333333 / 0.3)
    # Split over two images (shards add): the same figure.
    s = PixelRanking(bins=10)
    s.update(prob[:, :5], truth[:, :5])
    s.update(prob[:, 5:], truth[:, 5:])
    assert s.compute()["aupro"] == pytest.approx(r.compute()["aupro"])
    perfect = PixelRanking(bins=10)
    perfect.update(np.where(truth, 0.95, 0.05), truth)
    assert perfect.compute()["aupro"] == pytest.approx(1.0)
