"""Pixel-level and image-level metrics, accumulated over a whole split and reduced once.

Pixel level: `ConfusionMatrix` adds every batch's (target, prediction) pairs into one int64 matrix (rows =
target class, columns = predicted class, as in torchmetrics) and derives IoU, accuracy and Dice from the
totals at the end. Averaging per-batch (or per-image) IoU instead would weigh a batch with 10 defect pixels
like one with 10,000 and give 0/0 on defect-free images, so it is never done.

Image level: `ImageLevel` keeps one score per image (evaluation gives the highest defect probability in the
image, see `localize.PostProcess`), its label (defective or not) and, optionally, the decision taken (the
verdict: any defect record) and computes accuracy/precision/recall/F1 of the decisions (or of score >=
threshold when none were given) plus the threshold-free AUROC and average precision of the scores.

Defect-free images are always part of the evaluation. Feeding them is the caller's job (the evaluation loop
must not filter the split to defective images): they are where false alarms happen, and leaving them out
inflates pixel precision, defect IoU and image precision while hiding the over-kill rate a production line pays for.

NaN means "undefined", never "bad": a class absent from both target and prediction has no IoU, a split with no
defective (or no defect-free) image has no AUROC. NaN entries are reported as such and left out of means.

Distributed evaluation: every rank accumulates its shard, then `ConfusionMatrix.reduce_distributed()` /
`ImageLevel.gather_distributed()` combine them once before `compute()`. A `DistributedSampler` pads the split
with repeated samples to equal shard sizes; evaluate with a sampler that does not pad (or on one rank) when
exact figures matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .data.io import IGNORE_INDEX

# The figures evaluation reports that can pick best.pt (`train.monitor`; higher is better). A classifier has only
# the image_* ones.
MONITORS = (
    "miou",
    "defect_iou",
    "mean_dice",
    "macc",
    "pixel_acc",
    "image_auroc",
    "image_ap",
    "image_acc",
    "pixel_ap",
    "pixel_auroc",
)


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _sum_over_ranks(t: Tensor) -> Tensor:
    """all_reduce(SUM) of `t` over the initialised process group; returns the summed tensor."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        # A rank that saw no batch still holds its CPU tensor; NCCL only moves CUDA tensors.
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without numpy's RuntimeWarning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (undefined, not zero)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------------------------------------------
# pixel metrics
# --------------------------------------------------------------------------------------------------------------


class ConfusionMatrix:
    """Pixel confusion matrix accumulated over a split: `matrix[t, p]` counts pixels of target class t
    predicted as p (int64, on the device of the tensors given to `update`).

    num_classes: number of classes including background (a 1-logit sigmoid head has 2: background, defect).
    Pixels whose target is `ignore_index` are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (got {num_classes}); a 1-logit (sigmoid) head has 2 classes: "
                "background and defect"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._reduced = False

    def reset(self) -> None:
        """Zero the matrix for a new split (it stays on its device)."""
        self.matrix = torch.zeros_like(self.matrix)
        self._reduced = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: pred (B, H, W) integer class ids (the post-processed masks), target (B, H, W) class ids
        or ignore_index. A (B, 1, H, W) target is squeezed."""
        if target.ndim == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same (B, H, W) shape; "
                "compare masks at the same (native) size"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(
                "pred and target must hold integer class ids; post-process probabilities into masks first "
                "(localize.PostProcess)"
            )
        n = self.num_classes
        target, pred = target.long().flatten(), pred.long().flatten()
        valid = target != self.ignore_index
        target, pred = target[valid], pred[valid]
        # One sync per batch; a wrong label would otherwise land in another class's cell silently.
        bad_t = (target < 0) | (target >= n)
        bad_p = (pred < 0) | (pred >= n)
        if bool((bad_t | bad_p).any()):
            found_t = torch.unique(target[bad_t]).tolist()[:10]
            found_p = torch.unique(pred[bad_p]).tolist()[:10]
            raise ValueError(
                f"class ids outside 0..{n - 1} (target: {found_t}, prediction: {found_p}; ignore_index="
                f"{self.ignore_index}); binarise 0/255 masks to 0/1 or set num_classes to the model's class count"
            )
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).view(n, n)

    def reduce_distributed(self) -> None:
        """Sum the matrix over all ranks (a no-op unless torch.distributed is initialised). Call it once per
        split, on every rank, after the last update; `reset()` before accumulating the next split."""
        if not _dist_ready():
            return
        if self._reduced:
            raise RuntimeError("reduce_distributed() was already called on this matrix; reset() it first")
        self.matrix = _sum_over_ranks(self.matrix)
        self._reduced = True

    def state_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix.cpu(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        matrix = torch.as_tensor(state["matrix"], dtype=torch.int64)
        if matrix.shape != (self.num_classes, self.num_classes):
            raise ValueError(
                f"saved confusion matrix is {tuple(matrix.shape)}, this one is {self.num_classes}x{self.num_classes}"
            )
        self.matrix = matrix.to(self.matrix.device)

    def compute(self) -> dict[str, Any]:
        """Metrics from the accumulated matrix (lists have one float per class, class 0 = background):

        - `iou`: TP / (TP + FP + FN); NaN for a class absent from both target and prediction.
        - `miou`: mean of the non-NaN `iou`, i.e. over classes present in the target or the prediction
          (the torchmetrics "macro" rule). An all-background split predicted all-background has miou 1.0.
        - `defect_iou`: IoU of class 1 for 2 classes, mean non-NaN IoU over classes 1..N-1 otherwise; NaN when
          no defect was labelled or predicted anywhere in the split (nothing to localise).
        - `acc`: per-class accuracy = recall TP / (TP + FN); NaN for a class absent from the target.
          `macc`: mean of the non-NaN `acc`. `precision`: TP / (TP + FP), NaN for a never-predicted class.
        - `pixel_acc`: correct pixels / counted pixels.
        - `dice`: 2TP / (2TP + FP + FN) per class (= per-class pixel F1), NaN like `iou`; `mean_dice` (alias
          `f1`): mean of the non-NaN `dice`; `defect_dice`: like `defect_iou`.
        - `pixels`: counted (non-ignored) pixels; `matrix`: the matrix as nested lists.
        """
        m = self.matrix.detach().cpu().double().numpy()
        tp = np.diag(m)
        in_target, in_pred = m.sum(axis=1), m.sum(axis=0)
        fp, fn = in_pred - tp, in_target - tp
        iou = _divide(tp, tp + fp + fn)
        dice = _divide(2 * tp, 2 * tp + fp + fn)
        acc = _divide(tp, in_target)
        precision = _divide(tp, in_pred)
        total = m.sum()
        mean_dice = _nanmean(dice)
        return {
            "iou": iou.tolist(),
            "miou": _nanmean(iou),
            "defect_iou": _nanmean(iou[1:]),
            "acc": acc.tolist(),
            "macc": _nanmean(acc),
            "precision": precision.tolist(),
            "pixel_acc": float(tp.sum() / total) if total else math.nan,
            "dice": dice.tolist(),
            "mean_dice": mean_dice,
            "f1": mean_dice,
            "defect_dice": _nanmean(dice[1:]),
            "pixels": int(total),
            "matrix": self.matrix.detach().cpu().tolist(),
        }


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) for x from 0 to `limit` (x non-decreasing from 0; y linear between points)."""
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        if x0 >= limit:
            break
        if x1 > limit:  # the last segment, cut at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return float(area)


class PixelRanking:
    """Threshold-free pixel metrics: how well the defect probability ranks defect pixels above background ones.

    Keeps two histograms of the defect probability over `bins` equal bins of [0, 1], one for defect pixels and
    one for background pixels (ignored pixels are left out), summed over the whole split: memory is constant
    and shards add. From them: pixel AUROC (ties inside a bin count 1/2, as the trapezoidal ROC does), pixel AP
    (a step integral over the bin edges from high to low), and the threshold (a bin edge) with the best pixel F1
    together with that F1 and the defect IoU it gives, F1 / (2 - F1). Bin width 1/bins bounds the error of each.
    Used to pick best.pt without depending on the operating threshold (monitors pixel_ap, pixel_auroc) and
    to choose the threshold on validation (`evaluate.calibrate_threshold`, rule val-f1).
    """

    AUPRO_MAX_FPR = 0.3  # the MVTec AD convention: the PRO curve integrated up to this false-positive rate

    def __init__(self, bins: int = 1000) -> None:
        self.bins = bins
        self.pos = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)
        # AUPRO: for each ground-truth region (a connected component of defect pixels), the histogram of its pixels'
        # probabilities divided by its size, summed over all regions; and the number of regions.
        self.regions = np.zeros(bins, np.float64)
        self.n_regions = 0

    def update(self, prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        """prob (H, W) defect probability in [0, 1]; truth (H, W) bool defect pixels; valid (H, W) bool pixels
        that count (None: all)."""
        k = np.clip((np.asarray(prob, np.float64) * self.bins).astype(np.int64), 0, self.bins - 1)
        keep = np.ones(k.shape, bool) if valid is None else np.asarray(valid, bool)
        truth = np.asarray(truth, bool)
        self.pos += np.bincount(k[keep & truth], minlength=self.bins)
        self.neg += np.bincount(k[keep & ~truth], minlength=self.bins)
        n, labels = cv2.connectedComponents((keep & truth).astype(np.uint8), connectivity=8)
        if n > 1:
            inside = labels > 0
            per_region = np.bincount(
                (labels[inside] - 1) * self.bins + k[inside], minlength=(n - 1) * self.bins
            ).reshape(n - 1, self.bins)
            self.regions += (per_region / per_region.sum(1, keepdims=True)).sum(0)
            self.n_regions += n - 1

    def reduce_distributed(self) -> None:
        """Sum the histograms over all ranks (a no-op unless torch.distributed is initialised)."""
        if _dist_ready():
            self.pos, self.neg = _sum_over_ranks(torch.from_numpy(np.stack([self.pos, self.neg]))).cpu().numpy()
            both = _sum_over_ranks(torch.from_numpy(np.append(self.regions, self.n_regions))).cpu().numpy()
            self.regions, self.n_regions = both[:-1], int(round(both[-1]))

    def compute(self) -> dict[str, float]:
        """pixel_auroc, pixel_ap, aupro, best_f1, best_f1_iou, best_f1_threshold (NaN where a class of pixels is
        absent). aupro: the area under the per-region overlap (PRO: the mean over ground-truth regions of the share
        of each region's pixels called defect) against the background false-positive rate, from 0 to
        AUPRO_MAX_FPR, divided by AUPRO_MAX_FPR (1 is perfect), with the curve's points at the bin edges."""
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        nan = {
            "pixel_auroc": math.nan,
            "pixel_ap": math.nan,
            "aupro": math.nan,
            "best_f1": math.nan,
            "best_f1_iou": math.nan,
            "best_f1_threshold": math.nan,
        }
        if n_pos == 0 or n_neg == 0:
            return nan
        # tp[k], fp[k]: pixels with probability in bin k or above, i.e. called defect at threshold k / bins.
        tp = np.cumsum(self.pos[::-1])[::-1].astype(np.float64)
        fp = np.cumsum(self.neg[::-1])[::-1].astype(np.float64)
        neg_below = n_neg - fp  # background pixels in lower bins
        auroc = float(np.sum(self.pos * (neg_below + 0.5 * self.neg)) / (n_pos * n_neg))
        # AP over the distinct thresholds from high to low: recall steps where a bin holds defect pixels.
        precision = tp / np.maximum(tp + fp, 1)
        ap = float(np.sum(self.pos[::-1] / n_pos * precision[::-1]))
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        best = int(np.argmax(f1))
        # PRO and FPR at each threshold k / bins, from the highest (nothing called defect) down.
        pro = np.concatenate([[0.0], (np.cumsum(self.regions[::-1]) / max(self.n_regions, 1))])
        fpr = np.concatenate([[0.0], np.cumsum(self.neg[::-1]) / n_neg])
        aupro = _area_up_to(fpr, pro, self.AUPRO_MAX_FPR) / self.AUPRO_MAX_FPR
        return {
            "pixel_auroc": auroc,
            "pixel_ap": ap,
            "aupro": aupro,
            "best_f1": float(f1[best]),
            "best_f1_iou": float(f1[best] / (2 - f1[best])),
            "best_f1_threshold": best / self.bins,
        }


# --------------------------------------------------------------------------------------------------------------
# image metrics
# --------------------------------------------------------------------------------------------------------------


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (1-D), tied values sharing the mean of their ranks (like scipy's rankdata)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    first = last - counts + 1
    return ((first + last) / 2.0)[inverse.reshape(-1)]


def auroc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (N,) scores vs (N,) bool labels, from the Mann–Whitney U statistic:
    U / (n_pos · n_neg) with U = Σ ranks(positives) - n_pos (n_pos + 1) / 2, ties at average ranks (a tied
    positive/negative pair counts 1/2, as the trapezoidal ROC area does). NaN unless both classes are present."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: Σ_n (R_n - R_{n-1}) P_n over the distinct score
    thresholds from high to low (R_0 = 0), a step integral with no interpolation. NaN unless both classes
    are present (with no positive it is undefined; with no negative it is trivially 1 and says nothing)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        return math.nan
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # Last index of each run of equal scores: a threshold admits all tied images at once.
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[ends]
    precision = tps / (ends + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class ImageLevel:
    """Image-level detection metrics over a split: one score and one label (True = the image has a defect) per
    image, and optionally the decision taken for it (True = called defective). Scores are kept as float64 on
    the CPU."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._decisions: list[np.ndarray | None] = []

    def update(
        self,
        scores: Tensor | Sequence[float],
        labels: Tensor | Sequence[bool],
        predicted: Tensor | Sequence[bool] | None = None,
    ) -> None:
        """Add a batch: scores (B,) float (higher = more likely defective), labels (B,) bool, and the decisions
        predicted (B,) bool (evaluation passes the verdicts; without them compute() thresholds the scores)."""
        scores_np = torch.as_tensor(scores).detach().float().cpu().numpy().astype(np.float64).reshape(-1)
        labels_t = torch.as_tensor(labels).detach().cpu()
        if labels_t.dtype != torch.bool and not bool(((labels_t == 0) | (labels_t == 1)).all()):
            raise ValueError(
                f"image labels must be booleans or 0/1 (defective or not), got values {labels_t.unique().tolist()}"
            )
        labels_np = labels_t.bool().numpy().reshape(-1)
        if scores_np.shape != labels_np.shape:
            raise ValueError(
                f"scores ({scores_np.size} values) and labels ({labels_np.size}) must both be (B,), one per image"
            )
        if not np.isfinite(scores_np).all():
            raise ValueError("image scores contain NaN or inf; check the model's logits for overflow")
        decisions = None
        if predicted is not None:
            decisions = torch.as_tensor(predicted).detach().cpu().bool().numpy().reshape(-1)
            if decisions.shape != scores_np.shape:
                raise ValueError(f"predicted ({decisions.size} values) must be (B,), one decision per image")
        self._scores.append(scores_np)
        self._labels.append(labels_np)
        self._decisions.append(decisions)

    @property
    def scores(self) -> np.ndarray:
        """All scores so far, (N,) float64."""
        return np.concatenate(self._scores) if self._scores else np.zeros(0)

    @property
    def labels(self) -> np.ndarray:
        """All labels so far, (N,) bool."""
        return np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=bool)

    def gather_distributed(self) -> None:
        """Replace this rank's scores and labels with those of all ranks (rank order; a no-op unless
        torch.distributed is initialised). Call once per split on every rank, before `compute()`."""
        if not _dist_ready():
            return
        mine = (self._scores, self._labels, self._decisions)
        gathered: list[Any] = [None] * dist.get_world_size()
        # all_gather_object copes with shards of unequal length (the last batch of a split is usually short).
        dist.all_gather_object(gathered, mine)
        self._scores = [s for g in gathered for s in g[0]]
        self._labels = [lb for g in gathered for lb in g[1]]
        self._decisions = [d for g in gathered for d in g[2]]

    def compute(self, threshold: float = 0.5) -> dict[str, float | int]:
        """Metrics over all images so far. An image is predicted defective as its decision says, or, for batches
        given without decisions, when score >= threshold.

        accuracy, precision = TP/(TP+FP) (NaN if no image is predicted defective), recall = TP/(TP+FN) (NaN if
        no image is defective), f1 = 2TP/(2TP+FP+FN) (NaN if both are empty), the counts tp/fp/tn/fn,
        images, defective; and threshold-free `auroc` (Mann–Whitney U, see `auroc_score`) and `ap` (see
        `average_precision_score`). auroc and ap are NaN when the split has only defective or only defect-free
        images: ranking metrics measure how well the two groups are separated, which needs both.
        """
        scores, labels = self.scores, self.labels
        predicted = (
            np.concatenate([d if d is not None else s >= threshold for s, d in zip(self._scores, self._decisions)])
            if self._scores
            else labels
        )
        tp = int(np.sum(predicted & labels))
        fp = int(np.sum(predicted & ~labels))
        fn = int(np.sum(~predicted & labels))
        tn = int(np.sum(~predicted & ~labels))
        n = scores.size
        return {
            "accuracy": (tp + tn) / n if n else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan,
            "recall": tp / (tp + fn) if tp + fn else math.nan,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
            "auroc": auroc_score(scores, labels),
            "ap": average_precision_score(scores, labels),
            "threshold": float(threshold),
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "images": n,
            "defective": tp + fn,
        }
