"""Training and evaluation: the run folder, exact resume, DDP, and honest whole-split metrics.

A run folder `runs/<name>/` holds config.yaml, split.json, metrics.csv (one row per epoch), best.pt and
last.pt, curves.png and report.md. Checkpoints are plain dicts of tensors and Python values, written
atomically and read with `torch.load(weights_only=True)`; they carry the resolved config and the weights of
the `PixelModel` (raw pixels in, logits out: the normalisation is part of the weights).

The trainer reads top to bottom: `Trainer.__init__` sets up (run folder, data, model, optimiser), `run` loops
over epochs of `train_epoch` (each batch one `TrainStep`), `validate`, `checkpoint`, and `finish` evaluates
best.pt on the test split and writes the report. Evaluation (`evaluate_model`) runs every image through the
Predictor and its one post-processing step at the image's native size, so validation, test and `evaluate`
report what `predict` delivers.

Exact resume: every source of randomness is derived from (seed, epoch) at the start of each epoch
(shuffling, augmentation, dropout), and checkpoints are taken at epoch ends, so a run stopped after
epoch k and resumed ends with the same weights as one that ran through.
"""
from __future__ import annotations

import csv
import functools
import math
import os
import pickle
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import config as C
from .data import DatasetSpec, SegmentationDataset, WithReference, group_references, load_dataset
from .data.dataset import RandomCrops
from .data.io import IGNORE_INDEX, defect_pixels, image_size
from .data.splits import load_split, make_split, save_split, select, with_known_defect
from .data.stats import class_pixel_counts, median_frequency_weights
from .data.defects import CopyPaste, SyntheticDefects
from .data.transforms import Augmenter
from .localize import RegionMetrics, defect_probability, defects_from_mask
from .losses import build_loss
from .metrics import ConfusionMatrix, ImageLevel, PixelRanking
from .models import PixelModel, create_model, load_encoder_weights, model_task

# v2 stores the PixelModel's weights (keys "net.*" plus the normalisation buffers); v1 stored the bare network's.
CHECKPOINT_FORMAT = "defectseg-checkpoint-v2"
READABLE_FORMATS = ("defectseg-checkpoint-v1", CHECKPOINT_FORMAT)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says what to change."""


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a temp file in the same folder, then rename (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: the previous checkpoint stays, no temp file is left
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a defectseg checkpoint safely (weights_only=True); a corrupt or foreign file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass runs/<name>/best.pt or last.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: never retry with weights_only=False
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the refused object, e.g. posix.system
        raise ValueError(f"{path} is not a safe checkpoint: it holds Python objects other than tensors and plain "
                         f"values{' (' + found.group(1) + ')' if found else ''}, which could run code when loaded, "
                         "so it will not be loaded. Use a best.pt/last.pt written by `defectseg train`") from None
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                         "the file is corrupt or not a torch checkpoint: use a best.pt/last.pt written by "
                         "`defectseg train`") from exc
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt is None or not str(fmt).startswith("defectseg-checkpoint"):
        raise ValueError(f"{path} is not a defectseg checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
                         "to use bare weights, load them into a model with load_encoder_weights or "
                         "model.load_state_dict")
    if fmt not in READABLE_FORMATS:
        raise ValueError(f"{path} is a {fmt} checkpoint, written by a newer defectseg; this version reads "
                         f"{', '.join(READABLE_FORMATS)}: upgrade defectseg")
    return ckpt


def build_model(cfg: C.RunConfig, num_classes: int) -> PixelModel:
    """The configured network wrapped with its normalisation: raw pixel values in, logits out."""
    net = create_model(cfg.model.name, in_channels=input_channels(cfg), num_classes=num_classes,
                       **cfg.model.options)
    return PixelModel(net, cfg.data.mean, cfg.data.std)


def _load_weights(model: PixelModel, state: dict[str, torch.Tensor]) -> None:
    """Load a PixelModel state dict, or a bare network's (format v1, or written by hand) with the model's
    own normalisation (from the config)."""
    if not any(k.startswith("net.") for k in state):
        state = {**{f"net.{k}": v for k, v in state.items()}, "scale": model.scale, "shift": model.shift}
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> tuple[PixelModel, C.RunConfig]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode, CPU)."""
    cfg = C.from_dict(ckpt["config"])
    model = build_model(cfg, ckpt["num_classes"])
    try:
        _load_weights(model, ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{source}: the stored weights do not fit {cfg.model.name} with {input_channels(cfg)} "
                         f"input channels and {ckpt['num_classes']} outputs ({str(exc)[:300]}); the checkpoint's "
                         "config and weights disagree: re-train or re-save it") from exc
    return model.eval(), cfg


def _sched_state(s: Any) -> dict[str, Any]:
    # MultiStepLR keeps its milestones in a Counter, which weights_only loading refuses: store a dict.
    return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in s.state_dict().items()}


def _load_sched_state(s: Any, state: dict[str, Any]) -> None:
    if "milestones" in state:
        state = {**state, "milestones": Counter(state["milestones"])}
    s.load_state_dict(state)


# ----------------------------------------------------------------------------- helpers
def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def num_logits(cfg: C.RunConfig, class_names: list[str]) -> int:
    """1 sigmoid logit for binary data (unless the loss is CE: then 2 softmax logits); N for N classes."""
    if cfg.train.task == "classify":
        return 1
    if cfg.model.num_classes:
        return cfg.model.num_classes
    n = len(class_names)
    return 1 if n == 2 and cfg.train.loss != "ce" else n


def input_channels(cfg: C.RunConfig) -> int:
    """Model input channels: the image's, doubled in reference mode (image + reference)."""
    return cfg.data.channels * (2 if cfg.data.reference else 1)


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU: oneDNN runs bf16 convolutions with its own kernels (AVX-512 and up;
    AMX). A cheapmix-m training step at 128² then took 0.47x the float32 time with AMX, 0.6-0.7x with
    AVX-512 alone; on an AVX2-only CPU oneDNN falls back to reference bf16 code, 7x SLOWER than float32
    (docs/results.md, training speed)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on CUDA, and to bf16 on a CPU where it pays (`cpu_bf16`); else a no-op context."""
    on = dtype is not None and (device.type == "cuda" or (dtype == torch.bfloat16 and cpu_bf16()))
    return torch.autocast(device.type, dtype=dtype, enabled=on)


# ----------------------------------------------------------------------------- data
def prepare_split(cfg: C.RunConfig, spec: DatasetSpec, run_dir: Path | None) -> dict[str, list[str]]:
    """The run's split: reuse run_dir/split.json, else the configured split file, else a new seeded split."""
    existing = run_dir / "split.json" if run_dir else None
    if existing and existing.is_file():
        return load_split(existing)
    if cfg.data.split_file:
        return load_split(cfg.data.split_file)
    return make_split(spec.samples, cfg.data.fractions, seed=cfg.train.seed)


@dataclass
class EvalSet:
    """A split as evaluation reads it: images and masks at native size (a segmenter is evaluated through the
    Predictor, which resizes or tiles as predict does) or at the training size (a classifier), with one
    defect-free reference per image in reference mode."""

    dataset: SegmentationDataset
    references: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.dataset)


ASPECT_MIN = 1.5     # median height/width at or past which keep_aspect trains at the images' own aspect
SHAPE_MULTIPLE = 32  # keep_aspect rounds each side to this: a multiple of every registered model's size_multiple


def aspect_shape(sizes: Sequence[tuple[int, int]], size: int) -> tuple[int, int] | None:
    """The (H, W) `data.keep_aspect` trains at for images of these (H, W): their median aspect at about size²
    pixels, each side a multiple of SHAPE_MULTIPLE; None (square) when the median height/width is within 1.5 of 1.
    Squashing a 1250 x 500 image to a square shrinks its height 2.5 times more than its width, so a thin defect
    across the long side vanishes first; at the image's own aspect both sides shrink alike. The median, not the
    mean: a set that mixes tall and wide images (magnetic tile: median 1.19) stays square."""
    aspect = float(np.median([h / w for h, w in sizes]))
    if 1 / ASPECT_MIN < aspect < ASPECT_MIN:
        return None
    r = math.sqrt(aspect)
    return tuple(max(SHAPE_MULTIPLE, round(size * f / SHAPE_MULTIPLE) * SHAPE_MULTIPLE) for f in (r, 1 / r))


def split_dataset(cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, cache: bool
                  ) -> SegmentationDataset | WithReference:
    """One split's training dataset: images at the training size, or at native size in crop mode (each epoch
    then draws `RandomCrops` from them); in reference mode each image gets its reference (a file, or per group
    the first defect-free image of `pool`, the training samples)."""
    if cfg.data.crop and cfg.data.reference:
        raise ValueError("crop training does not support reference mode yet; drop data.crop (resize training) "
                         "or data.reference")
    size = None if cfg.data.crop else C.resize_hw(cfg.data)
    ds, refs = _images(cfg, spec, samples, pool, size, cache)
    return ds if refs is None else WithReference(ds, refs)


def eval_set(cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, cache: bool) -> EvalSet:
    """One split for evaluation (see `EvalSet`)."""
    size = C.resize_hw(cfg.data) if cfg.train.task == "classify" else None
    return EvalSet(*_images(cfg, spec, samples, pool, size, cache))


def _images(cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, size: tuple[int, int] | None,
            cache: bool) -> tuple[SegmentationDataset, list[np.ndarray] | None]:
    """A split's images and masks at `size` (None: native) and, in reference mode, one reference per image."""
    ds = SegmentationDataset(samples, size=size, channels=cfg.data.channels, cache=cache,
                             num_classes=spec.num_classes, skip_bad=cfg.data.skip_bad)
    refs = group_references(ds.samples, pool, size, cfg.data.channels, cfg.data.reference) \
        if cfg.data.reference else None
    return ds, refs


# ----------------------------------------------------------------------------- evaluation
def evaluate_model(model: PixelModel, split: EvalSet, cfg: C.RunConfig, device: torch.device, num_classes: int,
                   task: str = "segment", regions: bool = False, world: Dist = Dist(), batch_size: int = 8,
                   gate: Any = None, gate_threshold: float = 0.5) -> dict[str, float]:
    """Whole-split metrics of `model`: one confusion matrix and one list of image scores, reduced once.

    A segmenter is evaluated through the Predictor with the config's `infer` section, exactly as
    `defectseg predict` runs: the probability map at each image's native size, then the one post-processing
    step (`localize.PostProcess`) for the mask, the defect records and the verdict. Pixel metrics compare that
    mask with the native-size ground truth; the image is predicted defective when it has any defect record,
    and image AUROC/AP rank the image score (the highest defect probability). Defect-free images are included.
    With `regions`, per-defect box metrics too. Under DDP each rank takes every world-th image.
    gate: a classifier (`infer.load_net` of a task "classify" checkpoint) in front of the segmenter, as
    `predict --gate` runs the cascade: images it scores below `gate_threshold` are OK with an empty mask.
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
    out = {"defect_iou": pm["defect_iou"], "miou": pm["miou"], "macc": pm["macc"], "pixel_acc": pm["pixel_acc"],
           "mean_dice": pm["mean_dice"], **{f"iou_{i}": v for i, v in enumerate(pm["iou"])}, **_image_metrics(img),
           "pixel_auroc": pr["pixel_auroc"], "pixel_ap": pr["pixel_ap"], "aupro": pr["aupro"]}
    if reg is not None:
        rm = reg.compute()
        out.update({"region_ap50": rm["ap50"], "region_ap": rm["ap"], "region_precision50": rm["precision@0.5"],
                    "region_recall50": rm["recall@0.5"], "count_mae": rm["count_mae"]})
    return {k: float(v) for k, v in out.items()}


def calibrate_threshold(model: PixelModel, split: EvalSet, cfg: C.RunConfig, device: torch.device,
                        num_classes: int, rule: str, target_frr: float = 0.01,
                        batch_size: int = 8) -> tuple[float, str]:
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
    from .localize import PostProcess

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
        f"{allowed} of {len(levels)} defect-free validation images NG (target false-reject rate {target_frr})")


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
        return fallback, (f"kept {fallback:.4g}: the model has not learned to separate defects on the validation "
                          f"split (best pixel F1 {best['best_f1']:.3f}, calling every pixel a defect gives "
                          f"{trivial:.3f}); train longer, or see docs/results.md for recipes that learn")
    return best["best_f1_threshold"], f"best validation pixel F1 {best['best_f1']:.3f}"


def predictions(model: PixelModel, split: EvalSet, cfg: C.RunConfig, device: torch.device, num_classes: int,
                indices: list[int] | None = None, batch_size: int = 8, gate: Any = None,
                gate_threshold: float = 0.5) -> Iterator[tuple[Any, np.ndarray]]:
    """(infer.Result, native ground-truth mask (H, W)) per image of `split` (or of `indices`), through the predict
    path: the Predictor with the config's `infer` section and its one post-processing step (behind `gate`, a
    classifier net, when given)."""
    from .infer import Predictor, torch_net

    net = torch_net(model, cfg, num_classes, [], "segment", device)
    predictor = None
    for chunk in _chunks(list(range(len(split))) if indices is None else indices, batch_size, split.references):
        ref = None if split.references is None else split.references[chunk[0]]
        if predictor is None:
            predictor = Predictor(net, cfg.infer, batch_size=batch_size, tile=cfg.infer.tile, gate=gate,
                                  gate_threshold=gate_threshold, reference=ref)
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
    return {"image_auroc": il["auroc"], "image_ap": il["ap"], "image_acc": il["accuracy"],
            "image_precision": il["precision"], "image_recall": il["recall"]}


def _evaluate_classifier(model: PixelModel, split: EvalSet, indices: list[int], cfg: C.RunConfig,
                         device: torch.device, batch_size: int, world: Dist) -> dict[str, float]:
    """Image metrics of a classifier at its training size, as the Predictor's gate sees images: the image is
    predicted defective when its probability >= infer.threshold."""
    from .infer import classifier_probabilities, torch_net

    net, threshold = torch_net(model, cfg, 1, [], "classify", device), cfg.infer.threshold
    img = ImageLevel()
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        items = [split.dataset[i] for i in chunk]
        x = torch.stack([it["image"] for it in items])
        if split.references is not None:
            refs = [torch.from_numpy(np.atleast_3d(split.references[i])).permute(2, 0, 1) for i in chunk]
            x = torch.cat([x, torch.stack(refs)], 1)
        p = classifier_probabilities(net, x.numpy())
        img.update(p, [bool(defect_pixels(it["mask"]).any()) for it in items], p >= threshold)
    if world.world > 1:
        img.gather_distributed()
    return {k: float(v) for k, v in _image_metrics(img).items()}


# ----------------------------------------------------------------------------- training
# Registries: the config checks its values against these names, and the CLI lists them.
OPTIMIZERS: dict[str, Any] = {
    "adam": lambda c, params: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda c, params: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda c, params: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}
# Schedulers step once per iteration; MultiStep milestones are given in epochs.
SCHEDULES: dict[str, Any] = {
    "none": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
    "multistep": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.MultiStepLR(
        opt, [m * per_epoch for m in c.milestones], c.gamma),
    "cosine": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total)),
    "onecycle": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.OneCycleLR(opt, c.lr,
                                                                                    total_steps=max(1, total)),
}
# Validation metrics that can pick best.pt (higher is better); a classifier has only the image_* ones.
MONITORS = ("miou", "defect_iou", "mean_dice", "macc", "pixel_acc", "image_auroc", "image_ap", "image_acc",
            "pixel_ap", "pixel_auroc")


def epoch_order(n: int, defective: Sequence[bool] | None, share: float | None,
                gen: torch.Generator) -> list[int]:
    """The n draws of one epoch: a permutation of range(n), or, with `share`, at least round(share * n) draws of
    defective images and the rest of defect-free ones (each group permuted, repeated as needed), shuffled together:
    rare defects are seen as often as asked without dropping any defect-free image more than the count requires.
    `share` is a floor: where defective images already make up more of the split, the epoch is a permutation."""
    if share is None or defective is None:
        return torch.randperm(n, generator=gen).tolist()
    pos = [i for i in range(n) if defective[i]]
    neg = [i for i in range(n) if not defective[i]]
    if not pos or not neg:
        return torch.randperm(n, generator=gen).tolist()

    def draw(pool: list[int], k: int) -> list[int]:
        reps = -(-k // len(pool))
        return [pool[j] for r in range(reps) for j in torch.randperm(len(pool), generator=gen).tolist()][:k]

    k = max(round(share * n), len(pos))  # a floor: never fewer defective draws than the split holds
    picks = draw(pos, k) + draw(neg, n - k)
    return [picks[j] for j in torch.randperm(n, generator=gen).tolist()]


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or release) `model.encoder`: no gradients, and BatchNorm kept in eval mode so its running
    statistics do not move either (as SMP does). Call it after `model.train()`, which would undo the eval."""
    enc = getattr(model, "encoder", None)
    if enc is None:
        return
    for p in enc.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        enc.eval()


@dataclass
class TrainStep:
    """One optimisation step. The trainer calls it for every batch; `defectseg benchmark --train` times it."""

    model: nn.Module                 # a PixelModel (or DDP around one): raw pixels in, logits out
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    augment: Augmenter               # replaced every epoch by one seeded from (seed, epoch)
    scheduler: Any = None            # stepped once per iteration
    task: str = "segment"
    amp: torch.dtype | None = None   # autocast dtype, e.g. torch.bfloat16 (on the CPU only bf16, where it pays)
    channels_last: bool = False
    grad_clip: float | None = None
    defects: list = field(default_factory=list)  # SyntheticDefects / CopyPaste, after the augmentation

    def __call__(self, images: torch.Tensor, mask: torch.Tensor) -> float:
        """images uint8 (B, C, H, W), mask (B, H, W) class ids, both on the model's device -> the batch loss."""
        # Image and mask are augmented together on the device; the Augmenter works in [0, 1], the model in 0..255.
        x, mask = self.augment(images.float() / 255.0, mask.long())
        for make_defects in self.defects:  # painted or pasted defects on good images, with their masks
            x, mask = make_defects(x, mask)
        x = x * 255.0
        # The image label: any defect pixel (IGNORE_INDEX marks padding, not a defect), made ones included.
        labels = defect_pixels(mask).flatten(1).any(1).float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x.device, self.amp):
            logits = self.model(x).float()
        loss = self.loss_fn(logits[:, 0], labels) if self.task == "classify" else self.loss_fn(logits, mask)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights
            raise TrainingError(f"loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.item()


class _Progress:
    """A rich progress bar with loss and throughput, or one line per epoch in quiet mode."""

    def __init__(self, quiet: bool, enabled: bool) -> None:
        self.quiet, self.enabled = quiet, enabled
        self.bar = None
        if enabled and not quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *a):
        if self.bar:
            self.bar.__exit__(*a)

    def start(self, desc: str, total: int):
        if self.bar:
            self.task = self.bar.add_task(desc, total=total, info="")

    def step(self, info: str):
        if self.bar:
            self.bar.update(self.task, advance=1, info=info)

    def log(self, msg: str):
        if not self.enabled:
            return
        if self.bar:
            self.bar.console.print(msg)
        else:
            print(msg, flush=True)


@dataclass
class RunResult:
    run_dir: Path
    best: Path
    last: Path
    test_metrics: dict[str, float]
    epochs: int
    seconds: float


NATIVE_TILE = 1024
CHECK_DECODE_LIMIT = 5000  # splits up to this many samples are decoded whole before training (Trainer._check_files)
RUN_FILES = ("config.yaml", "split.json", "metrics.csv", "best.pt", "last.pt", "curves.png", "report.md")


def init_head_prior(head: nn.Module, counts: np.ndarray) -> bool:
    """Set the bias of a biased 1x1 output conv to the class prior of the training pixels (RetinaNet's init).

    At a zero bias every pixel starts at p(defect) = 0.5 and the first hundreds of steps only learn that defects
    are rare (a few % of pixels), flattening every feature on the way; starting at the prior skips that phase.
    counts: (N,) pixels per class, background first. One logit: log(p / (1 - p)) with p the defect share;
    N logits (softmax): log(frequency of each class). Returns False (and changes nothing) for other heads.
    """
    if not isinstance(head, nn.Conv2d) or head.bias is None or counts.sum() == 0:
        return False
    freq = (counts.astype(np.float64) + 1) / (counts.sum() + len(counts))  # +1: no log(0) for a class never seen
    if head.out_channels == 1:
        p = 1 - freq[0]
        bias = [math.log(p / (1 - p))]
    elif head.out_channels == len(counts):
        bias = np.log(freq).tolist()
    else:
        return False
    with torch.no_grad():
        head.bias.copy_(torch.tensor(bias, dtype=head.bias.dtype))
    return True


class Trainer:
    """One training run: `__init__` sets everything up, `run()` trains, validates, checkpoints and finishes."""

    def __init__(self, cfg: C.RunConfig, resume: str | Path | None = None, quiet: bool = False,
                 overwrite: bool = False) -> None:
        self.t_start = time.time()
        self.world = init_distributed(cfg.train.device)
        self.device = self._device(cfg.train.device)
        ckpt = load_checkpoint(resume) if resume else None
        self.cfg = cfg = C.from_dict(ckpt["config"] if ckpt else cfg.to_dict())  # a copy: the caller's stays
        if resume:
            # A resumed run continues in the checkpoint's own folder: its stored out_dir may be relative to
            # another working directory.
            folder = Path(resume).resolve().parent
            cfg.out_dir, cfg.name = str(folder.parent), folder.name
        # Stored resolved, so evaluate and predict find the data from any working directory.
        cfg.data.root = str(Path(cfg.data.root).resolve()) if cfg.data.root else cfg.data.root
        if cfg.data.split_file:
            cfg.data.split_file = str(Path(cfg.data.split_file).resolve())
        if cfg.data.crop and cfg.infer.tile is None:
            # A model trained on native-resolution crops must see native pixels: evaluation and predict run it
            # on whole images (padded), in windows of at most NATIVE_TILE when larger.
            cfg.infer.tile = max(NATIVE_TILE, cfg.data.crop)
        self.task = cfg.train.task
        if model_task(cfg.model.name) != self.task:
            raise ValueError(f"model {cfg.model.name!r} is a {model_task(cfg.model.name)} model but the task is "
                             f"{self.task!r}; pick a matching --model or --task")
        self.run_dir = cfg.run_dir
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self._prepare_run_folder(fresh=ckpt is None, overwrite=overwrite)
        if ckpt is not None and self.world.main:
            _drop_rows_after(self.run_dir / "metrics.csv", ckpt["epoch"] + 1)
        seed_everything(cfg.train.seed)
        self._build_data(resumed=ckpt is not None)
        self._build_model(ckpt)
        self.progress = _Progress(quiet, self.world.main)

    # ---------------------------------------------------------------- setup
    def _device(self, name: str) -> torch.device:
        device = pick_device(name)
        if self.world.world > 1 and device.type == "cuda":
            device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(device)
        return device

    def _prepare_run_folder(self, fresh: bool, overwrite: bool) -> None:
        """Lock the folder for this run (`RunLock`); a fresh run refuses a folder that holds a run unless
        `overwrite` (then it is cleared)."""
        self.lock = RunLock(self.run_dir) if self.world.main else None
        if self.lock is not None:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.lock.acquire()
            except OSError as exc:
                raise ValueError(f"cannot write the run folder {self.run_dir}: {exc.strerror}; choose a writable "
                                 "--out-dir") from None
        if fresh and self.last_path.exists():
            if not overwrite:
                raise ValueError(f"run folder {self.run_dir} already holds a run; continue it with --resume "
                                 f"{self.last_path}, pick another --name, or pass --overwrite")
            if self.world.main:
                for name in RUN_FILES:
                    (self.run_dir / name).unlink(missing_ok=True)
            if self.world.world > 1:
                dist.barrier()
        if self.world.main:
            C.save_yaml(self.cfg, self.run_dir / "config.yaml")  # the folder was made writable above

    def _build_data(self, resumed: bool) -> None:
        cfg = self.cfg
        self.spec = load_dataset(cfg.data.root, cfg.data.format, skip_bad=cfg.data.skip_bad,
                                 allow_unlabeled=cfg.data.allow_unlabeled, mask_rule=cfg.data.mask_rule)
        # Only a resumed run keeps the split.json in its folder: one left by a failed start of a fresh run must
        # not override --split-file or the seeded split.
        self.split = prepare_split(cfg, self.spec, self.run_dir if resumed else None)
        if self.world.main:
            save_split(self.run_dir / "split.json", self.split, seed=cfg.train.seed,
                       fractions=list(cfg.data.fractions), data=str(cfg.data.root))
        pool = select(self.spec, self.split.get("train", []))
        train = pool if not cfg.data.defective_only else [s for s in pool if s.defective is not False]
        if cfg.data.defect_free_only or cfg.data.defective_images is not None:
            # a layout that cannot tell a good image from a defective one needs the masks decoded here
            train = [with_known_defect(s) for s in train]
            bad = [s for s in train if s.defective is not False]
            keep = 0 if cfg.data.defect_free_only else min(cfg.data.defective_images, len(bad))
            chosen = set(random.Random(cfg.train.seed).sample(range(len(bad)), keep))  # seeded: the same k images
            train = [s for s in train if s.defective is False] + [s for i, s in enumerate(bad) if i in chosen]
            if not train:
                raise ValueError("the training split holds no defect-free image to train on (data.defect_free_only)")
        if cfg.data.keep_aspect and cfg.data.shape is None and not cfg.data.crop and train:
            # headers only, of at most 200 images (seeded): the aspect of the training split
            picks = random.Random(0).sample(train, min(len(train), 200))
            cfg.data.shape = aspect_shape([image_size(s.image) for s in picks], cfg.data.size)
            if cfg.data.shape and self.world.main:  # the config in the folder says what training used
                C.save_yaml(cfg, self.run_dir / "config.yaml")
        self.train_set = split_dataset(cfg, self.spec, train, pool, cfg.data.cache)
        if len(self.train_set) == 0:
            raise ValueError(f"the training split of {cfg.data.root} is empty; check the data folder and split file")
        self.defective = None
        if cfg.data.defective_share is not None:  # decodes (and caches) every training mask once
            ds = getattr(self.train_set, "dataset", self.train_set)
            self.defective = [bool(defect_pixels(ds.arrays(i)[1]).any()) for i in range(len(ds))]
        self.eval_sets = {name: eval_set(cfg, self.spec, select(self.spec, self.split.get(name, [])), pool,
                                         cfg.data.cache) for name in ("val", "test")}
        self._check_files()
        if self.task == "segment":
            self._warn_without_defects()

    def _warn_without_defects(self) -> None:
        """Say so when the validation or test split holds no defective image (its masks are decoded and cached
        by now): best.pt, the threshold and the test figures would then be chosen on, or say, nothing."""
        for name, ev in self.eval_sets.items():
            ds, n = ev.dataset, len(ev.dataset.samples)
            if 0 < n <= CHECK_DECODE_LIMIT and not any(defect_pixels(ds.arrays(i)[1]).any() for i in range(n)):
                what = "best.pt and the threshold would be chosen on nothing" if name == "val" else \
                    "the test figures would say nothing about defects"
                print(f"warning: the {name} split has no defective image among its {n}: {what}; add defective "
                      "images, or give more of them to it (data.fractions, --split-file)", file=sys.stderr,
                      flush=True)

    def _check_files(self) -> None:
        """Read every sample of every split before the first epoch, so a truncated test image fails now and not
        after the training: a full decode (which fills the cache evaluation uses anyway) for splits of up to
        CHECK_DECODE_LIMIT samples, the headers only for larger ones. With data.skip_bad the datasets have
        decoded every sample and dropped (and listed) the bad ones already; here they are reported."""
        sets = {"train": getattr(self.train_set, "dataset", self.train_set),
                **{name: ev.dataset for name, ev in self.eval_sets.items()}}
        if self.cfg.data.skip_bad:
            self.skipped = [*self.spec.skipped, *((p, f"{name} split: {why}") for name, ds in sets.items()
                                                  for p, why in getattr(ds, "skipped", []))]
            for p, why in self.skipped:
                print(f"skipped {p}: {why}", file=sys.stderr, flush=True)
            return
        self.skipped = list(self.spec.skipped)
        bad = []
        for name, ds in sets.items():
            for i, smp in enumerate(ds.samples):
                try:
                    if len(ds.samples) <= CHECK_DECODE_LIMIT:
                        ds.arrays(i)
                    else:
                        image_size(smp.image)
                        if smp.mask is not None:
                            image_size(smp.mask)
                except ValueError as exc:
                    bad.append(f"  {name} split: {exc}")
        if bad:
            raise ValueError(f"{len(bad)} samples cannot be read:\n" + "\n".join(bad[:10]) +
                             ("\n  ..." if len(bad) > 10 else "") + "\nreplace or remove them, or pass --skip-bad to "
                             "skip them (each is listed, and in report.md)")

    def _build_model(self, ckpt: dict[str, Any] | None) -> None:
        cfg, world = self.cfg, self.world
        self.n_logits = num_logits(cfg, self.spec.class_names)
        self.model = build_model(cfg, self.n_logits)
        m = self.model.size_multiple
        if cfg.data.crop and cfg.data.crop % m:
            raise ValueError(f"data.crop {cfg.data.crop} must be a multiple of {m} for {cfg.model.name}; e.g. "
                             f"{max(m, cfg.data.crop // m * m)}")
        if cfg.data.shape and any(n % m for n in cfg.data.shape):
            raise ValueError(f"data.shape {list(cfg.data.shape)} must be multiples of {m} for {cfg.model.name}; "
                             f"e.g. {[max(m, n // m * m) for n in cfg.data.shape]}")
        if cfg.model.encoder_weights and ckpt is None:
            load_encoder_weights(self.model.net, cfg.model.encoder_weights)
        if cfg.train.prior_init and ckpt is None and self.task == "segment" and hasattr(self.model.net, "head"):
            init_head_prior(self.model.net.head, self._class_counts)
        self.model.to(self.device)
        if cfg.train.channels_last:  # faster on CUDA, and for CheapNet training on the CPU too (1.5x measured)
            self.model.to(memory_format=torch.channels_last)
        shard = len(self.train_set) // world.world if world.world > 1 else len(self.train_set)
        self.steps_per_epoch = max(1, math.ceil(shard / cfg.train.batch_size))
        self.epochs = cfg.train.epochs
        if cfg.train.iterations:
            self.epochs = math.ceil(cfg.train.iterations / self.steps_per_epoch)
        total_steps = cfg.train.iterations or self.epochs * self.steps_per_epoch
        opt = OPTIMIZERS[cfg.train.optimizer](cfg.train, self.model.parameters())
        sched = SCHEDULES[cfg.train.schedule](cfg.train, opt, self.steps_per_epoch, total_steps)
        ddp: nn.Module = self.model
        if world.world > 1:
            ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = TrainStep(ddp, self._loss().to(self.device), opt, Augmenter("none"), sched, self.task,
                              torch.bfloat16 if cfg.train.amp else None, cfg.train.channels_last,
                              cfg.train.grad_clip)
        self.start_epoch, self.steps, self.best, self.best_epoch = 0, 0, -math.inf, -1
        self.threshold_note = ""  # how _choose_threshold chose the operating threshold (for report.md)
        if ckpt is not None:
            _load_weights(self.model, ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            _load_sched_state(sched, ckpt["scheduler"])
            self.start_epoch, self.steps = ckpt["epoch"] + 1, ckpt["step"]
            self.best, self.best_epoch = ckpt["best"], ckpt["best_epoch"]

    @functools.cached_property
    def _class_counts(self) -> np.ndarray:
        """Training pixels per class (decodes every training mask once; the prior init and the median-frequency
        loss weights share it)."""
        return class_pixel_counts(getattr(self.train_set, "dataset", self.train_set), self.spec.num_classes)

    def _loss(self) -> nn.Module:
        cfg = self.cfg.train
        if self.task == "classify":
            return nn.BCEWithLogitsLoss()
        weights = None
        if cfg.class_weights == "median-frequency":
            weights = torch.tensor(median_frequency_weights(self._class_counts), dtype=torch.float32)
        return build_loss(cfg.loss, class_weights=weights, **cfg.loss_options)

    # ---------------------------------------------------------------- the loop
    def run(self, stop_after_epoch: int | None = None) -> RunResult:
        """Train from `start_epoch`; stop_after_epoch: stop (as if interrupted) once that epoch's checkpoint is
        written (tests use it)."""
        cfg = self.cfg
        epoch = self.start_epoch - 1
        with self.progress as prog:
            prog.log(f"training {cfg.model.name} on {len(self.train_set)} images ({cfg.data.root}), "
                     f"{self.epochs} epochs x {self.steps_per_epoch} steps, device {self.device}")
            for epoch in range(self.start_epoch, self.epochs):
                if stop_after_epoch is not None and epoch > stop_after_epoch:
                    epoch -= 1
                    break
                row = self.train_epoch(epoch)
                is_last = epoch == self.epochs - 1 or bool(cfg.train.iterations and self.steps >= cfg.train.iterations)
                val = self.validate() if is_last or (epoch + 1) % cfg.train.eval_every == 0 else {}
                self.checkpoint(epoch, {**row, **{f"val_{k}": v for k, v in val.items()}}, val)
                if is_last:
                    break
        epochs_done = epoch + 1
        finished = stop_after_epoch is None or epochs_done >= self.epochs
        return self.finish(epochs_done, evaluate_test=finished)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the (sharded) training set; returns the epoch's row of metrics.csv."""
        cfg, world, step = self.cfg, self.world, self.step
        # Everything random in this epoch derives from (seed, epoch): exact resume at epoch boundaries.
        epoch_seed = cfg.train.seed * 100003 + epoch
        torch.manual_seed(epoch_seed)
        order = epoch_order(len(self.train_set), self.defective, cfg.data.defective_share,
                            torch.Generator().manual_seed(epoch_seed))
        if world.world > 1:
            order = order[world.rank: world.world * (len(order) // world.world): world.world]
        data = (RandomCrops(self.train_set, order, cfg.data.crop, cfg.data.defect_crops, epoch_seed)
                if cfg.data.crop else Subset(self.train_set, order))
        loader = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=False, num_workers=cfg.data.workers)
        step.augment = Augmenter(cfg.data.augment, seed=epoch_seed, ignore_index=IGNORE_INDEX)
        step.defects = [f for f in (SyntheticDefects(cfg.data.synthetic_defects, seed=epoch_seed + 1),
                                    CopyPaste(cfg.data.copy_paste, seed=epoch_seed + 2)) if f.p > 0]
        step.model.train()
        set_encoder_frozen(self.model.net, epoch < cfg.model.freeze_encoder_epochs)
        self.progress.start(f"epoch {epoch + 1}/{self.epochs}", len(loader))
        t0, seen, loss_sum, n_batches = time.time(), 0, 0.0, 0
        for batch in loader:
            if cfg.train.iterations and self.steps >= cfg.train.iterations:
                break
            try:
                loss = step(batch["image"].to(self.device, non_blocking=True),
                            batch["mask"].to(self.device, non_blocking=True))
            except TrainingError as exc:
                last = self.last_path if self.last_path.exists() else "(none yet)"
                raise TrainingError(f"{exc} at epoch {epoch + 1}, step {self.steps + 1}; the last good checkpoint "
                                    f"is {last}. Lower --lr, set train.grad_clip, or check the data for corrupt "
                                    "images.") from None
            self.steps, seen, loss_sum, n_batches = self.steps + 1, seen + len(batch["image"]), loss_sum + loss, \
                n_batches + 1
            self.progress.step(f"loss {loss:.4f}  {seen / (time.time() - t0):.1f} img/s")
        if world.world > 1:
            t = torch.tensor([loss_sum, n_batches], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            loss_sum, n_batches = float(t[0]), int(t[1])
        seconds = time.time() - t0
        return {"epoch": epoch + 1, "lr": step.optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / max(1, n_batches), "seconds": round(seconds, 2),
                "img_per_s": round(seen * world.world / max(1e-9, seconds), 1)}

    def validate(self) -> dict[str, float]:
        """Whole validation split metrics (empty without a validation split)."""
        if not len(self.eval_sets["val"]):
            return {}
        return evaluate_model(self.model, self.eval_sets["val"], self.cfg, self.device, self.n_logits, self.task,
                              world=self.world, batch_size=self.cfg.train.batch_size)

    def checkpoint(self, epoch: int, row: dict[str, Any], val: dict[str, float]) -> None:
        """Append the epoch's row to metrics.csv and write last.pt, and best.pt when the monitor improved.

        Without a validation split best.pt follows the training loss; on epochs that are not evaluated,
        nothing is compared."""
        monitor = monitor_of(self.cfg)
        if val and monitor not in val:
            raise ValueError(f"monitor {monitor!r} is not a validation metric; choose one of {', '.join(val)}")
        score = val.get(monitor, math.nan) if len(self.eval_sets["val"]) else -row["train_loss"]
        improved = not math.isnan(score) and score > self.best
        if improved:
            self.best, self.best_epoch = score, epoch + 1
        if self.world.main:
            _append_csv(self.run_dir / "metrics.csv", row)
            state = {"config": self.cfg.to_dict(), "num_classes": self.n_logits,
                     "class_names": self.spec.class_names, "task": self.task, "model": self.model.state_dict(),
                     "optimizer": self.step.optimizer.state_dict(), "scheduler": _sched_state(self.step.scheduler),
                     "epoch": epoch, "step": self.steps, "best": self.best, "best_epoch": self.best_epoch,
                     "metrics": val}
            save_checkpoint(self.last_path, state)
            if improved or not self.best_path.exists():
                save_checkpoint(self.best_path, state)
        self.progress.log(f"epoch {epoch + 1}/{self.epochs}  loss {row['train_loss']:.4f}  " +
                          "  ".join(f"{k} {v:.3f}" for k, v in val.items() if k in (monitor, "miou", "image_auroc")))

    def finish(self, epochs_done: int, evaluate_test: bool = True) -> RunResult:
        """Evaluate best.pt on the test split (with per-defect metrics), plot the curves, write report.md."""
        test_metrics: dict[str, float] = {}
        if self.world.main and evaluate_test:
            best_model, _ = model_from_checkpoint(load_checkpoint(self.best_path))
            self._choose_threshold(best_model)
            if len(self.eval_sets["test"]):
                test_metrics = evaluate_model(best_model, self.eval_sets["test"], self.cfg, self.device,
                                              self.n_logits, self.task, regions=self.task == "segment",
                                              batch_size=self.cfg.train.batch_size)
            from .viz import plot_curves

            plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png")
            used = {"train": len(getattr(self.train_set, "dataset", self.train_set).samples),
                    **{name: len(ev.dataset.samples) for name, ev in self.eval_sets.items()}}
            write_report(self.run_dir / "report.md", self.cfg, self.spec, used, test_metrics, self.best_epoch,
                         time.time() - self.t_start, self.threshold_note, self.skipped)
        if self.world.world > 1:
            dist.barrier()
        return RunResult(self.run_dir, self.best_path, self.last_path, test_metrics, epochs_done,
                         time.time() - self.t_start)


    def _choose_threshold(self, model: PixelModel) -> None:
        """With infer.threshold_from set, pick the operating threshold on the validation split and store it in
        best.pt and config.yaml, so evaluate, predict and the test figures below use it."""
        rule = self.cfg.infer.threshold_from
        if rule == "fixed" or self.task != "segment" or not len(self.eval_sets["val"]):
            return
        if rule == "val-f1" and self.cfg.data.defect_free_only:
            rule = "val-frr"  # a model that saw no real defect is set on good parts: target_frr of them rejected
        thr, how = calibrate_threshold(model, self.eval_sets["val"], self.cfg, self.device, self.n_logits, rule,
                                       self.cfg.infer.target_frr, self.cfg.train.batch_size)
        self.threshold_note = how if rule == self.cfg.infer.threshold_from else \
            f"val-frr, as data.defect_free_only: {how}"
        if how.startswith("kept"):  # a warning the user must see, even with -q
            print(f"warning: threshold {how}", file=sys.stderr, flush=True)
        else:
            self.progress.log(f"threshold {thr:.4f} chosen on the validation split ({rule}: {how})")
        self.cfg.infer.threshold = thr
        ckpt = load_checkpoint(self.best_path)
        ckpt["config"]["infer"]["threshold"] = thr
        save_checkpoint(self.best_path, ckpt)
        C.save_yaml(self.cfg, self.run_dir / "config.yaml")


def train(cfg: C.RunConfig, resume: str | Path | None = None, quiet: bool = False,
          stop_after_epoch: int | None = None, overwrite: bool = False) -> RunResult:
    """Train per `cfg`, writing the run folder; resume from a last.pt exactly (see `Trainer`).

    A fresh run refuses a run folder that already holds a run unless `overwrite` (then it is cleared).
    stop_after_epoch: stop (as if interrupted) once that epoch's checkpoint is written; used by tests.
    """
    trainer = Trainer(cfg, resume, quiet, overwrite)
    try:
        return trainer.run(stop_after_epoch)
    finally:
        if trainer.lock is not None:
            trainer.lock.release()


class RunLock:
    """An exclusive lock on a run folder for the life of one training: the file `.lock` holding "pid host".

    Two trainings into one folder would interleave metrics.csv and mix one's best.pt with the other's last.pt,
    so a second is refused while the first's process lives. A lock left by a dead process (kill -9, a crash)
    on this host is stale and taken over; one from another host (a shared drive) cannot be checked and is
    refused with the file to delete. A lock of this very process is taken over too (a failed start in the
    same Python session leaves one behind).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        import socket

        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.path.read_text().split() if self.path.is_file() else []
                if self._stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                raise ValueError(f"run folder {self.path.parent} is in use by another training (pid "
                                 f"{' on '.join(owner) or '?'}); pick another --name, or wait for it to finish "
                                 f"(if no training runs there, delete {self.path})") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise ValueError(f"cannot lock {self.path.parent}: another training took it at the same moment")

    @staticmethod
    def _stale(owner: list[str]) -> bool:
        import socket

        if len(owner) != 2 or not owner[0].isdigit():
            return True  # torn or foreign content: no live owner can be named
        pid, host = int(owner[0]), owner[1]
        if host != socket.gethostname():
            return False
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _drop_rows_after(path: Path, epochs: int) -> None:
    """Keep the metrics.csv rows of the first `epochs` epochs: a run killed after appending an epoch's row but
    before its last.pt was written redoes that epoch on resume, and must not list it twice."""
    if not path.exists():
        return
    rows = list(csv.DictReader(open(path, newline="")))
    keep = [r for r in rows if not str(r.get("epoch", "")).isdigit() or int(r["epoch"]) <= epochs]
    if len(keep) != len(rows):
        path.unlink()
        for r in keep:
            _append_csv(path, {k: v for k, v in r.items() if v != ""})


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Add a row; the header is the union of all rows' keys (validation columns appear at the first
    evaluated epoch, which need not be the first), so the file is rewritten whole: it is small."""
    rows: list[dict[str, Any]] = list(csv.DictReader(open(path, newline=""))) if path.exists() else []
    rows.append(row)
    header: list[str] = []
    for r in rows:
        header += [k for k in r if k not in header]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in header} for r in rows)
    os.replace(tmp, path)


def monitor_of(cfg: C.RunConfig) -> str:
    """The validation metric that picks best.pt: `train.monitor` for a segmenter; a classifier has only image
    metrics, so image AUROC."""
    return cfg.train.monitor if cfg.train.task == "segment" else "image_auroc"


def write_report(path: Path, cfg: C.RunConfig, spec: DatasetSpec, used: dict[str, int],
                 metrics: dict[str, float], best_epoch: int, seconds: float, threshold_note: str = "",
                 skipped: Sequence[tuple[Any, str]] = ()) -> None:
    """report.md: the run's settings, the images each split used (skipped files listed), the test metrics."""
    how = ("images resized to the training size, as the gate sees them" if cfg.train.task == "classify" else
           "each image at its native size through the predict path: threshold, min_area and connected "
           "components of `localize.PostProcess`")
    lines = [f"# Run `{cfg.name}`", "",
             f"- model: `{cfg.model.name}` {cfg.model.options or ''}",
             f"- data: `{cfg.data.root}` (format {spec.format}, classes {spec.class_names}), "
             f"size {'x'.join(map(str, C.resize_hw(cfg.data)))}, augment {cfg.data.augment}",
             f"- split: train {used.get('train', 0)} / val {used.get('val', 0)} / test {used.get('test', 0)} images "
             f"used (split.json{'; ' + str(len(skipped)) + ' files skipped, listed below' if skipped else ''})",
             f"- loss {cfg.train.loss}, {cfg.train.optimizer} lr {cfg.train.lr}, schedule {cfg.train.schedule}, "
             f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, seed {cfg.train.seed}",
             f"- post-processing: threshold {cfg.infer.threshold:.4g} ({cfg.infer.threshold_from}"
             f"{': ' + threshold_note if threshold_note else ''}), min_area "
             f"{cfg.infer.min_area}, connectivity "
             f"{cfg.infer.connectivity}, {'tiles of ' + str(cfg.infer.tile) if cfg.infer.tile else 'resize mode'}",
             f"- best epoch (by validation {monitor_of(cfg)}): {best_epoch}; wall time {seconds:.0f} s", "",
             f"## Test split (whole split, defect-free images included; {how})", "",
             "What each number means: docs/metrics.md.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    if skipped:
        lines += ["", f"## Skipped files ({len(skipped)})", ""]
        lines += [f"- `{p}`: {why}" for p, why in skipped]
    path.write_text("\n".join(lines) + "\n")


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, split_name: str = "test",
                        format: str | None = None, device: str = "auto", batch_size: int | None = None,
                        split_file: str | None = None, gate: str | Path | None = None,
                        gate_threshold: float = 0.5, threshold: float | None = None,
                        min_area: int | None = None) -> dict[str, float]:
    """Evaluate a checkpoint on one split of a dataset (the run's split.json when it is beside the checkpoint);
    with `gate` (a classifier checkpoint), the cascade: images the gate scores below `gate_threshold` are OK.
    threshold / min_area override the checkpoint's post-processing, as `predict --threshold/--min-area` do."""
    from .infer import load_net
    from .localize import PostProcess

    ckpt = load_checkpoint(checkpoint)
    task = ckpt.get("task", "segment")
    if gate is not None and task != "segment":
        raise ValueError(f"{checkpoint} is a {task} model; --gate goes in front of a segmentation checkpoint")
    gate_net = None if gate is None else load_net(gate, device, "torch")  # the Predictor checks it is a classifier
    model, cfg = model_from_checkpoint(ckpt, source=checkpoint)
    cfg.infer.threshold = cfg.infer.threshold if threshold is None else threshold
    cfg.infer.min_area = cfg.infer.min_area if min_area is None else min_area
    PostProcess.from_config(cfg.infer)  # a bad override fails here, with its message, before the data is read
    root = data or cfg.data.root
    spec = load_dataset(root, format or cfg.data.format, skip_bad=cfg.data.skip_bad,
                        allow_unlabeled=cfg.data.allow_unlabeled, mask_rule=cfg.data.mask_rule)
    run_split = Path(checkpoint).parent / "split.json"
    if split_name == "all":
        split = {"all": [s.key for s in spec.samples]}
    elif split_file:
        split = load_split(split_file)
    elif run_split.is_file() and (data is None or Path(data).resolve() == Path(cfg.data.root).resolve()):
        split = load_split(run_split)
    else:
        split = make_split(spec.samples, cfg.data.fractions, seed=cfg.train.seed)
    if split_name not in split:
        raise ValueError(f"split {split_name!r} not found; choose one of {', '.join(split)}")
    pool = select(spec, split["train"]) if "train" in split else spec.samples
    ev = eval_set(cfg, spec, select(spec, split[split_name]), pool, cache=False)
    # A run trained with skip_bad evaluates with it: say which files the metrics leave out.
    for p, why in [*spec.skipped, *ev.dataset.skipped]:
        print(f"skipped {p}: {why}", file=sys.stderr, flush=True)
    return evaluate_model(model, ev, cfg, pick_device(device), ckpt["num_classes"], task,
                          regions=task == "segment", batch_size=batch_size or cfg.train.batch_size,
                          gate=gate_net, gate_threshold=gate_threshold)
