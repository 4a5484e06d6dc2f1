"""Per-defect localization (probability map -> connected components -> boxes) and region metrics.

A defect record is a plain dict, so it serialises to JSON as is:

    {"x1": int, "y1": int, "x2": int, "y2": int, "area": int, "score": float, "class": int}

Boxes are in pixel units with **exclusive** right/bottom edges, like COCO boxes: ``x2 = x1 + width``,
``y2 = y1 + height``. A single pixel at column 3, row 5 is ``x1=3, y1=5, x2=4, y2=6``, and the box
crops as ``image[y1:y2, x1:x2]``. ``area`` is the number of pixels of the component (not of the box:
a ring's area excludes its hole). ``class`` is the defect class id (1 for a binary head; background,
class 0, never produces records).

Region metrics match predicted boxes to ground-truth components per image and per class, greedily in
descending score order (COCO's rule), and report precision/recall/F1 at IoU 0.5, AP50 and COCO
AP@[.5:.95] with 101-point interpolation. Written in numpy; no pycocotools.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["PostProcess", "Detection", "find_defects", "defects_from_mask", "box_iou", "RegionMetrics"]

_BOX_KEYS = ("x1", "y1", "x2", "y2")
# Softmax/sigmoid outputs can overshoot [0, 1] by float rounding; anything beyond this is not a
# probability (most likely raw logits).
_PROB_TOLERANCE = 1e-3


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity={connectivity!r} is not supported; use 4 or 8")


def _components(mask: np.ndarray, connectivity: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Label a boolean (H, W) mask. Returns (count including background label 0, labels, stats)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S
    )
    return count, labels, stats


def _records(stats: np.ndarray, scores: np.ndarray, cls: int, keep: np.ndarray) -> list[dict[str, Any]]:
    """Build records for the component labels in `keep` (labels >= 1)."""
    out = []
    for label in keep:
        x, y, w, h, area = (int(v) for v in stats[label])
        out.append(
            {"x1": x, "y1": y, "x2": x + w, "y2": y + h, "area": area, "score": float(scores[label]), "class": cls}
        )
    return out


def _sort_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Ties broken by class then position so the output does not depend on label order.
    return sorted(records, key=lambda r: (-r["score"], r["class"], r["y1"], r["x1"]))


def _check_prob(prob: np.ndarray) -> np.ndarray:
    """A (H, W) or (N, H, W) float probability map, or a ValueError saying what is wrong with it."""
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim not in (2, 3) or prob.size == 0:
        raise ValueError(
            f"prob has shape {prob.shape}; expected a non-empty (H, W) defect probability map or (N, H, W) "
            "class probabilities (drop the batch dimension first)"
        )
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(
            f"prob has dtype {prob.dtype}; pass float probabilities (for a label mask use defects_from_mask)"
        )
    lo, hi = float(prob.min()), float(prob.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("prob contains NaN or infinite values; check the model output")
    if lo < -_PROB_TOLERANCE or hi > 1 + _PROB_TOLERANCE:
        raise ValueError(
            f"prob values span [{lo:.3g}, {hi:.3g}], not [0, 1]; these look like logits: apply "
            "sigmoid (one channel) or softmax over classes (several channels) first"
        )
    return prob


@dataclass
class Detection:
    """What post-processing makes of one image's probability map.

    mask: (H, W) uint8 class ids (0 background): exactly the pixels of `defects`.
    defects: records (module docstring), sorted by score. score: the image's defect score, the highest
    defect probability of any pixel (binary head: the sigmoid; multi-class: 1 - background probability);
    image AUROC/AP rank images by it. verdict: "NG" when there is any defect record, else "OK".
    """

    mask: np.ndarray = field(repr=False)
    defects: list[dict[str, Any]]
    score: float

    @property
    def verdict(self) -> str:
        return "NG" if self.defects else "OK"


def defect_probability(prob: np.ndarray) -> np.ndarray:
    """The probability that a pixel is a defect of any class: prob itself for one logit (H, W), 1 - p(background)
    for class probabilities (N, H, W). The image score and the threshold rules all read this map."""
    return prob if prob.ndim == 2 else 1.0 - prob[0]


class PostProcess:
    """The one step from a probability map to the class mask, the defect records and the OK/NG verdict.

    evaluate, validation during training and predict all call it, so the number a report shows is the number
    a user gets. Rules:

    - binary head, prob (H, W): a pixel is a defect when ``prob >= threshold``.
    - multi-class head, prob (N, H, W) with class 0 = background: a pixel's class is the argmax; it is a defect
      when that class is not background and ``1 - prob[0] >= threshold``. An argmax on a defect class implies
      ``1 - prob[0] >= 0.5``, so any threshold <= 0.5 gives the plain argmax segmentation.
    - components are found per class (`connectivity` 8 or 4) in one pass; components with fewer than
      `min_area` pixels are dropped from both the records and the mask.
    - a record's score is the "mean" or "max" probability of its class over its pixels.
    """

    def __init__(self, threshold: float = 0.5, min_area: int = 1, connectivity: int = 8, score: str = "mean") -> None:
        _check_connectivity(connectivity)
        if score not in ("mean", "max"):
            raise ValueError(f"score={score!r} is not supported; use 'mean' or 'max'")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold!r} is not a probability; pass a value in [0, 1]")
        if min_area < 0:
            raise ValueError(f"min_area={min_area!r} is negative; pass 0 or a positive pixel count")
        self.threshold, self.min_area, self.connectivity, self.score = threshold, min_area, connectivity, score

    @classmethod
    def from_config(cls, infer: Any) -> PostProcess:
        """From an `InferConfig` (threshold, min_area, connectivity, score)."""
        return cls(infer.threshold, infer.min_area, infer.connectivity, infer.score)

    def __call__(self, prob: np.ndarray) -> Detection:
        """prob: (H, W) defect probability (sigmoid) or (N, H, W) class probabilities (softmax). Logits are
        rejected: apply sigmoid/softmax first."""
        prob = _check_prob(prob)
        defect_p = defect_probability(prob)
        score = float(defect_p.max())
        mask = np.zeros(defect_p.shape, np.uint8)
        # Most images on a line are OK: skip the connected-components pass (seconds on a 400 Mpx image). A
        # multi-class argmax defect has 1 - prob[0] >= 0.5 only up to float rounding: leave that a margin.
        if score < (self.threshold if prob.ndim == 2 else min(self.threshold, 0.5 - 1e-6)):
            return Detection(mask, [], score)
        if prob.ndim == 2:
            class_maps = {1: (prob >= self.threshold, prob)}
        else:
            labels = prob.argmax(axis=0)
            fg = labels != 0
            # At or below 0.5 the argmax already implies the threshold; skipping the test there avoids
            # dropping argmax pixels whose softmax sums to 1 only up to float rounding.
            if self.threshold > 0.5:
                fg &= defect_p >= self.threshold
            class_maps = {int(c): (fg & (labels == c), prob[c]) for c in np.unique(labels[fg])}
        records: list[dict[str, Any]] = []
        for cls, (pixels, p) in class_maps.items():
            records += self._components(pixels, p, cls, mask)
        return Detection(mask, _sort_records(records), score)

    def _components(self, pixels: np.ndarray, p: np.ndarray, cls: int, mask: np.ndarray) -> list[dict[str, Any]]:
        """Records of the components of `pixels` that are large enough; paints them into `mask` as `cls`."""
        count, comp, stats = _components(pixels, self.connectivity)
        keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= max(self.min_area, 1))
        keep = keep[keep != 0]  # label 0 is the background
        if keep.size == 0:
            return []
        kept = np.zeros(count, bool)
        kept[keep] = True
        mask[kept[comp]] = cls  # the same labels decide the mask and the records: they agree pixel for pixel
        p64 = p.astype(np.float64, copy=False)
        if self.score == "mean":
            sums = np.bincount(comp.ravel(), weights=p64.ravel(), minlength=count)
            scores = sums / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        else:
            scores = np.zeros(count)
            scores[keep] = ndimage.maximum(p64, labels=comp, index=keep)
        return _records(stats, scores, cls, keep)


def find_defects(
    prob: np.ndarray, threshold: float = 0.5, min_area: int = 1, connectivity: int = 8, score: str = "mean"
) -> list[dict[str, Any]]:
    """Defect records of a probability map, sorted by score: `PostProcess(...)(prob).defects`."""
    return PostProcess(threshold, min_area, connectivity, score)(prob).defects


def defects_from_mask(mask: np.ndarray, connectivity: int = 8, ignore_index: int | None = None) -> list[dict[str, Any]]:
    """Ground-truth defect records (score 1.0) from a (H, W) class-id mask (0 = background).

    A boolean mask is a binary mask (True = class 1). Pixels equal to `ignore_index` (e.g. 255 for
    "don't care" regions) are treated as background. Components are found per class.
    """
    _check_connectivity(connectivity)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {mask.shape}; expected a (H, W) class-id mask")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            f"mask has dtype {mask.dtype}; pass integer class ids (threshold probability maps with find_defects)"
        )
    valid = mask != 0
    if ignore_index is not None:
        valid &= mask != ignore_index
    if valid.any() and int(mask[valid].min()) < 0:
        raise ValueError("mask contains negative class ids; class ids must be 0 (background) or positive")
    records: list[dict[str, Any]] = []
    for cls in np.unique(mask[valid]):
        count, comp, stats = _components(mask == cls, connectivity)
        keep = np.arange(1, count)
        records.extend(_records(stats, np.ones(count), int(cls), keep))
    return _sort_records(records)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N, 4) and b (M, 4) as [x1, y1, x2, y2] (exclusive x2/y2) -> (N, M).

    Empty boxes have IoU 0 with everything (including themselves).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _as_arrays(defects: Sequence[dict[str, Any]], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (K, 4), scores (K,), classes (K,)) from records."""
    for i, d in enumerate(defects):
        missing = [k for k in (*_BOX_KEYS, "class") if k not in d]
        if missing:
            raise ValueError(
                f"{what} defect #{i} lacks {missing}; records need x1, y1, x2, y2, class (and score for "
                "predictions) as made by find_defects/defects_from_mask"
            )
    boxes = np.array([[d[k] for k in _BOX_KEYS] for d in defects], dtype=np.float64).reshape(-1, 4)
    scores = np.array([float(d.get("score", 1.0)) for d in defects], dtype=np.float64)
    classes = np.array([int(d["class"]) for d in defects], dtype=np.int64)
    return boxes, scores, classes


def _greedy_match(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """COCO greedy matching. iou (P, G) with predictions already in descending score order.

    Each prediction takes the unmatched ground truth with the highest IoU >= threshold; each ground
    truth is matched at most once, so duplicates become false positives. Returns tp (P, T) bool.
    """
    n_pred, n_gt = iou.shape
    tp = np.zeros((n_pred, len(thresholds)), dtype=bool)
    if n_pred == 0 or n_gt == 0:
        return tp
    # One pass over predictions, all thresholds at once: taken[t, g] = gt g already matched at thresholds[t].
    taken = np.zeros((len(thresholds), n_gt), dtype=bool)
    rows = np.arange(len(thresholds))
    for p in range(n_pred):
        cand = np.where(taken, -1.0, iou[p][None, :])
        g = cand.argmax(axis=1)
        hit = cand[rows, g] >= thresholds
        taken[rows[hit], g[hit]] = True
        tp[p] = hit
    return tp


def _average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of one class at one IoU threshold.

    scores (P,), tp (P,) bool over all images; predictions sorted by descending score with a stable
    sort (ties keep image order, as COCO does). Precision is made monotone (the envelope) before
    sampling it at recall 0, 0.01, ..., 1; recall levels never reached count as precision 0.
    """
    assert n_gt > 0
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    tps = np.cumsum(tp)
    fps = np.cumsum(~tp)
    recall = tps / n_gt
    precision = tps / (tps + fps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    levels = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, levels, side="left")
    sampled = np.where(idx < len(recall), precision[np.minimum(idx, len(recall) - 1)], 0.0)
    return float(sampled.mean())


class RegionMetrics:
    """Per-defect box metrics accumulated over a split, reduced once in `compute()`.

    `update(pred_defects, gt_defects)` once per image (defect-free images included: they count for
    false positives and `count_mae`). Matching is per image and per class: a prediction matches only a
    ground truth of the same class in the same image. `compute()` returns:

    - ``precision@0.5``, ``recall@0.5``, ``f1@0.5``: greedy matching in descending score order at
      IoU >= 0.5, each ground truth matched at most once (duplicates are false positives);
      f1 = 2TP / (2TP + FP + FN).
    - ``ap50``: AP at IoU 0.5 (COCO 101-point interpolation), averaged over classes that have ground
      truth; ``ap``: COCO AP@[.5:.95], the mean over `iou_thresholds`. Predictions of a class with no
      ground truth anywhere count as false positives in precision but do not enter AP (as in COCO).
      Multi-class splits also get ``ap50_class{c}`` and ``ap_class{c}`` per class with ground truth.
    - ``n_images``, ``n_gt``, ``n_pred``, ``images_with_gt``, ``count_mae`` (mean absolute error of
      the predicted vs true number of defects per image).

    Undefined values are NaN, never a made-up 0 or 1: with no ground truth in the split, recall and
    AP are NaN (precision is 0 if there are predictions); with no predictions precision is NaN (recall
    and F1 are 0 if there is ground truth); F1 is NaN only when there is neither.
    """

    def __init__(self, iou_thresholds: Sequence[float] | np.ndarray = np.arange(0.5, 0.96, 0.05)) -> None:
        thr = np.round(np.asarray(iou_thresholds, dtype=np.float64).ravel(), 10)  # 0.7000000000000001 -> 0.7
        if thr.size == 0 or np.any((thr <= 0) | (thr > 1)):
            raise ValueError(f"iou_thresholds={list(thr)} must be a non-empty list of values in (0, 1]")
        # Precision/recall/AP50 always use 0.5, so it is matched even when not among the thresholds.
        self.iou_thresholds = thr
        self._all_thresholds = np.unique(np.concatenate([thr, [0.5]]))
        self._i50 = int(np.flatnonzero(self._all_thresholds == 0.5)[0])
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._scores: list[np.ndarray] = []  # per image (P,)
        self._classes: list[np.ndarray] = []  # per image (P,)
        self._tp: list[np.ndarray] = []  # per image (P, T) over _all_thresholds
        self._gt_classes: list[np.ndarray] = []  # per image (G,)

    def update(self, pred_defects: Sequence[dict[str, Any]], gt_defects: Sequence[dict[str, Any]]) -> None:
        """Add one image: its predicted records (with scores) and its ground-truth records."""
        pboxes, pscores, pclasses = _as_arrays(pred_defects, "predicted")
        gboxes, _, gclasses = _as_arrays(gt_defects, "ground-truth")
        order = np.argsort(-pscores, kind="stable")
        pboxes, pscores, pclasses = pboxes[order], pscores[order], pclasses[order]
        tp = np.zeros((len(pscores), len(self._all_thresholds)), dtype=bool)
        for cls in np.unique(pclasses):
            pi = np.flatnonzero(pclasses == cls)
            gi = np.flatnonzero(gclasses == cls)
            tp[pi] = _greedy_match(box_iou(pboxes[pi], gboxes[gi]), self._all_thresholds)
        self._scores.append(pscores)
        self._classes.append(pclasses)
        self._tp.append(tp)
        self._gt_classes.append(gclasses)

    def merge(self, other: RegionMetrics) -> RegionMetrics:
        """Add the images accumulated by `other` (e.g. another worker or rank) to this one."""
        if not np.array_equal(self._all_thresholds, other._all_thresholds):
            raise ValueError("cannot merge RegionMetrics with different iou_thresholds; build both with the same ones")
        self._scores += other._scores
        self._classes += other._classes
        self._tp += other._tp
        self._gt_classes += other._gt_classes
        return self

    def compute(self) -> dict[str, float]:
        """Reduce everything seen so far (see the class docstring for the keys)."""
        n_images = len(self._scores)
        nan = float("nan")
        scores = np.concatenate(self._scores) if n_images else np.zeros(0)
        classes = np.concatenate(self._classes) if n_images else np.zeros(0, dtype=np.int64)
        tp = np.concatenate(self._tp) if n_images else np.zeros((0, len(self._all_thresholds)), dtype=bool)
        gt_classes = np.concatenate(self._gt_classes) if n_images else np.zeros(0, dtype=np.int64)
        n_pred, n_gt = len(scores), len(gt_classes)
        tp50 = int(tp[:, self._i50].sum())

        precision = tp50 / n_pred if n_pred else nan
        recall = tp50 / n_gt if n_gt else nan
        f1 = 2 * tp50 / (n_pred + n_gt) if (n_pred + n_gt) else nan  # 2TP / (2TP + FP + FN)

        gt_cls, gt_count = np.unique(gt_classes, return_counts=True)
        # ap_table[k, t]: AP of class gt_cls[k] at threshold _all_thresholds[t]
        ap_table = np.array(
            [
                [_average_precision(scores[classes == c], tp[classes == c, t], int(n)) for t in range(tp.shape[1])]
                for c, n in zip(gt_cls, gt_count)
            ]
        ).reshape(len(gt_cls), len(self._all_thresholds))
        in_ap = np.isin(self._all_thresholds, self.iou_thresholds)
        out: dict[str, float] = {
            "precision@0.5": precision,
            "recall@0.5": recall,
            "f1@0.5": f1,
            "ap50": float(ap_table[:, self._i50].mean()) if len(gt_cls) else nan,
            "ap": float(ap_table[:, in_ap].mean()) if len(gt_cls) else nan,
            "n_images": n_images,
            "n_gt": n_gt,
            "n_pred": n_pred,
            "images_with_gt": int(sum(len(g) > 0 for g in self._gt_classes)),
            "count_mae": (
                float(np.mean([abs(len(p) - len(g)) for p, g in zip(self._scores, self._gt_classes)]))
                if n_images
                else nan
            ),
        }
        if len(np.union1d(gt_cls, classes)) > 1:
            for k, c in enumerate(gt_cls):
                out[f"ap50_class{int(c)}"] = float(ap_table[k, self._i50])
                out[f"ap_class{int(c)}"] = float(ap_table[k, in_ap].mean())
        return out
