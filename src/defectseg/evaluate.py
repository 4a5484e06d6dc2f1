"""Evaluation: a split through the predict path, reduced once into honest whole-split metrics, and the operating
threshold chosen on the validation split.

Every image runs through the Predictor and its one post-processing step at the image's native size (a classifier
through the gate), so validation, test and `defectseg evaluate` report what `predict` delivers.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from .backends import Net, load_net, torch_net
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import DatasetSpec, SegmentationDataset, group_references, load_dataset
from .data.io import IGNORE_INDEX, defect_pixels
from .data.splits import load_split, make_split, select
from .localize import PostProcess, RegionMetrics, defect_probability, defects_from_mask
from .metrics import ConfusionMatrix, ImageLevel, PixelRanking
from .models import PixelModel
from .predictor import Gate, Predictor, References
from .runtime import Dist, pick_device

__all__ = [
    "EvalSet",
    "calibrate_threshold",
    "eval_set",
    "evaluate_checkpoint",
    "evaluate_model",
    "f1_threshold",
    "predictions",
    "split_images",
]


@dataclass
class EvalSet:
    """A split as evaluation reads it: images and masks at native size (evaluation feeds them through the
    Predictor or the gate, which resize or tile as predict does), with one defect-free reference per image in
    reference mode."""

    dataset: SegmentationDataset
    references: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)


def eval_set(cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, cache: bool) -> EvalSet:
    """One split for evaluation (see `EvalSet`)."""
    return EvalSet(*split_images(cfg, spec, samples, pool, None, cache))


def split_images(
    cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, size: tuple[int, int] | None, cache: bool
) -> tuple[SegmentationDataset, list[np.ndarray] | None]:
    """A split's images and masks at `size` (None: native) and, in reference mode, one reference per image."""
    ds = SegmentationDataset(
        samples,
        size=size,
        channels=cfg.data.channels,
        cache=cache,
        num_classes=spec.num_classes,
        skip_bad=cfg.data.skip_bad,
    )
    refs = (
        group_references(ds.samples, pool, size, cfg.data.channels, cfg.data.reference) if cfg.data.reference else None
    )
    return ds, refs


# ----------------------------------------------------------------------------- evaluation
def evaluate_model(
    model: PixelModel,
    split: EvalSet,
    cfg: C.RunConfig,
    device: torch.device,
    num_classes: int,
    task: str = "segment",
    regions: bool = False,
    world: Dist = Dist(),
    batch_size: int = 8,
    gate: Net | None = None,
    gate_threshold: float | None = None,
) -> dict[str, float]:
    """Whole-split metrics of `model`: one confusion matrix and one list of image scores, reduced once.

    A segmenter is evaluated through the Predictor with the config's `infer` section, exactly as
    `defectseg predict` runs: the probability map at each image's native size, then the one post-processing
    step (`localize.PostProcess`) for the mask, the defect records and the verdict. Pixel metrics compare that
    mask with the native-size ground truth; the image is predicted defective when it has any defect record,
    and image AUROC/AP rank the image score (the highest defect probability). Defect-free images are included.
    With `regions`, per-defect box metrics too. Under DDP each rank takes every world-th image.
    gate: a classifier or a model of good parts (`backends.load_net` of a task "classify" or "anomaly"
    checkpoint) in front of the segmenter, as `predict --gate` runs the cascade: images it scores below
    `gate_threshold` (default: the gate's own stored threshold) are OK with an empty mask.
    """
    indices = list(range(world.rank, len(split), world.world))
    if task == "classify":
        return _evaluate_classifier(model, split, indices, cfg, device, batch_size, world)
    cm, img, ranking = ConfusionMatrix(max(2, num_classes)), ImageLevel(), PixelRanking()
    reg = RegionMetrics() if regions else None
    for r, gt in predictions(model, split, cfg, device, num_classes, indices, batch_size, gate, gate_threshold):
        cm.update(torch.from_numpy(r.mask)[None], torch.from_numpy(np.array(gt))[None])  # cached: read-only
        truth = defect_pixels(gt)
        ranking.update(defect_probability(r.prob), truth, gt != IGNORE_INDEX)
        img.update([r.score], [bool(truth.any())], [r.verdict == "NG"])
        if reg is not None:
            reg.update(r.defects, defects_from_mask(gt, cfg.infer.connectivity, ignore_index=IGNORE_INDEX))
    if world.world > 1:
        cm.reduce_distributed()
        img.gather_distributed()
        ranking.reduce_distributed()
    pm, pr = cm.compute(), ranking.compute()
    out = {
        "defect_iou": pm["defect_iou"],
        "miou": pm["miou"],
        "macc": pm["macc"],
        "pixel_acc": pm["pixel_acc"],
        "mean_dice": pm["mean_dice"],
        **{f"iou_{i}": v for i, v in enumerate(pm["iou"])},
        **_image_metrics(img),
        "pixel_auroc": pr["pixel_auroc"],
        "pixel_ap": pr["pixel_ap"],
        "aupro": pr["aupro"],
    }
    if reg is not None:
        rm = reg.compute()
        out.update(
            {
                "region_ap50": rm["ap50"],
                "region_ap": rm["ap"],
                "region_precision50": rm["precision@0.5"],
                "region_recall50": rm["recall@0.5"],
                "count_mae": rm["count_mae"],
            }
        )
    return {k: float(v) for k, v in out.items()}


def calibrate_threshold(
    model: PixelModel,
    split: EvalSet,
    cfg: C.RunConfig,
    device: torch.device,
    num_classes: int,
    rule: str,
    target_frr: float = 0.01,
    batch_size: int = 8,
) -> tuple[float, str]:
    """The operating threshold chosen on a (validation) split through the predict path, and one line saying how.

    rule "val-f1": the threshold with the best pixel F1 of the defect probability against the ground truth
    over the whole split (before `min_area`: a pixel-level choice), searched on a 0.001 grid (`PixelRanking`).
    A model that has not learned still has a "best" threshold: one low enough to call nearly every pixel a
    defect (on a 2 % prior that scores F1 0.04). When the best F1 is not clearly above that of calling every
    pixel a defect (less than a tenth of the way from it to 1), `cfg.infer.threshold` is kept and the line
    says why, rather than shipping a model that marks whole images.
    rule "val-frr": the lowest threshold at which at most `target_frr` of the split's defect-free images are
    called NG by the one post-processing step (min_area included): for each defect-free image the highest
    threshold that still yields a defect record is found by bisection (that set only grows as the threshold
    falls), and the threshold is placed just above the allowed number of them.
    """
    ranking, ng_levels = PixelRanking(), []
    for r, gt in predictions(model, split, cfg, device, num_classes, None, batch_size):
        truth = defect_pixels(gt)
        ranking.update(defect_probability(r.prob), truth, gt != IGNORE_INDEX)
        if rule == "val-frr" and not truth.any():
            lo, hi = 0.0, 1.0  # invariant: a defect record at lo (or lo == 0), none above hi
            for _ in range(14):
                mid = (lo + hi) / 2
                found = PostProcess(mid, cfg.infer.min_area, cfg.infer.connectivity)(r.prob).defects
                lo, hi = (mid, hi) if found else (lo, mid)
            ng_levels.append(lo)
    kept = cfg.infer.threshold
    if rule == "val-f1":
        return f1_threshold(ranking, kept)
    levels = sorted(ng_levels, reverse=True)
    allowed = int(target_frr * len(levels))
    if not levels:
        return kept, f"kept {kept:.4g}: the validation split has no defect-free image for val-frr"
    if allowed >= len(levels):
        return 0.0, f"target false-reject rate {target_frr} allows every one of {len(levels)} defect-free images"
    # images at or below this level stay OK
    return float(min(1.0, levels[allowed] + 1e-4)), (
        f"{allowed} of {len(levels)} defect-free validation images NG (target false-reject rate {target_frr})"
    )


def f1_threshold(ranking: PixelRanking, fallback: float) -> tuple[float, str]:
    """The best-F1 threshold of a split's pixel ranking and a line saying how it was chosen, or `fallback` (and
    why) when the split lacks a pixel class or the best F1 is not clearly above that of calling every pixel a
    defect: less than a tenth of the way from it to 1 (see `calibrate_threshold`)."""
    best = ranking.compute()
    if math.isnan(best["best_f1"]):
        return fallback, f"kept {fallback:.4g}: the validation split lacks defect or background pixels for val-f1"
    n_pos, n_neg = int(ranking.pos.sum()), int(ranking.neg.sum())
    trivial = 2 * n_pos / (2 * n_pos + n_neg)  # F1 of calling every pixel a defect
    if best["best_f1"] < trivial + 0.1 * (1 - trivial):
        return fallback, (
            f"kept {fallback:.4g}: the model has not learned to separate defects on the validation "
            f"split (best pixel F1 {best['best_f1']:.3f}, calling every pixel a defect gives "
            f"{trivial:.3f}); train longer, or see docs/results.md for recipes that learn"
        )
    return best["best_f1_threshold"], f"best validation pixel F1 {best['best_f1']:.3f}"


def predictions(
    model: PixelModel,
    split: EvalSet,
    cfg: C.RunConfig,
    device: torch.device,
    num_classes: int,
    indices: list[int] | None = None,
    batch_size: int = 8,
    gate: Net | None = None,
    gate_threshold: float | None = None,
) -> Iterator[tuple[Any, np.ndarray]]:
    """(outputs.Result, native ground-truth mask (H, W)) per image of `split` (or of `indices`), through the predict
    path: the Predictor with the config's `infer` section and its one post-processing step (behind `gate`, a
    classifier net, when given)."""
    net = torch_net(model, cfg, num_classes, [], "segment", device)
    predictor = None
    for chunk in _chunks(list(range(len(split))) if indices is None else indices, batch_size, split.references):
        ref = None if split.references is None else split.references[chunk[0]]
        if predictor is None:
            predictor = Predictor(
                net,
                cfg.infer,
                batch_size=batch_size,
                tile=cfg.infer.tile,
                gate=gate,
                gate_threshold=gate_threshold,
                reference=ref,
            )
        predictor.use_reference(ref)
        images, masks = zip(*(split.dataset.arrays(i) for i in chunk))
        yield from zip(predictor.predict_arrays(images), masks)


def _chunks(indices: list[int], size: int, references: Sequence[np.ndarray] | None) -> list[list[int]]:
    """Consecutive runs of at most `size` indices that share one reference (all share None)."""
    out: list[list[int]] = []
    for i in indices:
        same_ref = references is None or (out and references[out[-1][0]] is references[i])
        if out and len(out[-1]) < size and same_ref:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _image_metrics(img: ImageLevel) -> dict[str, float]:
    il = img.compute()
    return {
        "image_auroc": il["auroc"],
        "image_ap": il["ap"],
        "image_acc": il["accuracy"],
        "image_precision": il["precision"],
        "image_recall": il["recall"],
    }


def _evaluate_classifier(
    model: PixelModel,
    split: EvalSet,
    indices: list[int],
    cfg: C.RunConfig,
    device: torch.device,
    batch_size: int,
    world: Dist,
) -> dict[str, float]:
    """Image metrics of a classifier through the gate path (`predictor.Gate`): each whole image resized to the
    training size as predict's gate sees it, predicted defective when its probability >= infer.threshold."""
    gate = Gate(torch_net(model, cfg, 1, [], "classify", device), cfg.infer.threshold)
    img = ImageLevel()
    for chunk in _chunks(indices, batch_size, split.references):
        refs = None if split.references is None else References(split.references[chunk[0]])
        images, masks = zip(*(split.dataset.arrays(i) for i in chunk))
        p = gate.probabilities(images, refs, batch_size)
        img.update(p, [bool(defect_pixels(m).any()) for m in masks], p >= gate.threshold)
    if world.world > 1:
        img.gather_distributed()
    return {k: float(v) for k, v in _image_metrics(img).items()}


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    split_name: str = "test",
    format: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    split_file: str | None = None,
    gate: str | Path | None = None,
    gate_threshold: float | None = None,
    threshold: float | None = None,
    min_area: int | None = None,
) -> dict[str, float]:
    """Evaluate a checkpoint on one split of a dataset (the run's split.json when it is beside the checkpoint);
    with `gate` (a classifier or anomaly checkpoint), the cascade: images the gate scores below `gate_threshold`
    (default: the gate's own) are OK.
    threshold / min_area override the checkpoint's post-processing, as `predict --threshold/--min-area` do."""
    ckpt = load_checkpoint(checkpoint)
    task = ckpt.get("task", "segment")
    if gate is not None and task != "segment":
        raise ValueError(f"{checkpoint} is a {task} model; --gate goes in front of a segmentation checkpoint")
    gate_net = None if gate is None else load_net(gate, device, "torch")  # the Predictor checks it can gate
    model, cfg = model_from_checkpoint(ckpt, source=checkpoint)
    cfg.infer = cfg.infer.overridden(threshold=threshold, min_area=min_area)  # checked before the data is read
    root = data or cfg.data.root
    spec = load_dataset(
        root,
        format or cfg.data.format,
        skip_bad=cfg.data.skip_bad,
        allow_unlabeled=cfg.data.allow_unlabeled,
        mask_rule=cfg.data.mask_rule,
    )
    run_split = Path(checkpoint).parent / "split.json"
    if split_name == "all":
        split = {"all": [s.key for s in spec.samples]}
    elif split_file:
        split = load_split(split_file)
    elif run_split.is_file() and (data is None or Path(data).resolve() == Path(cfg.data.root).resolve()):
        split = load_split(run_split)
    else:
        split = make_split(spec.samples, cfg.data.fractions, cfg.train.seed, cfg.data.keep_parts)
    if split_name not in split:
        raise ValueError(f"split {split_name!r} not found; choose one of {', '.join(split)}")
    pool = select(spec, split["train"]) if "train" in split else spec.samples
    ev = eval_set(cfg, spec, select(spec, split[split_name]), pool, cache=False)
    # A run trained with skip_bad evaluates with it: say which files the metrics leave out.
    for p, why in [*spec.skipped, *ev.dataset.skipped]:
        print(f"skipped {p}: {why}", file=sys.stderr, flush=True)
    return evaluate_model(
        model,
        ev,
        cfg,
        pick_device(device),
        ckpt["num_classes"],
        task,
        regions=task == "segment",
        batch_size=batch_size or cfg.train.batch_size,
        gate=gate_net,
        gate_threshold=gate_threshold,
    )
