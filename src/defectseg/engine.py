"""Training and evaluation: the run folder, exact resume, DDP, and honest whole-split metrics.

A run folder `runs/<name>/` holds config.yaml, split.json, metrics.csv (one row per epoch), best.pt and
last.pt, curves.png and report.md. Checkpoints are plain dicts of tensors and Python values, written
atomically and read with `torch.load(weights_only=True)`; they carry the resolved config.

Exact resume: every source of randomness is derived from (seed, epoch) at the start of each epoch
(shuffling, augmentation, dropout), and checkpoints are taken at epoch ends, so a run stopped after
epoch k and resumed ends with the same weights as one that ran through.
"""
from __future__ import annotations

import csv
import math
import os
import random
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import config as C
from .data import DatasetSpec, SegmentationDataset, WithReference, group_references, load_dataset
from .data.splits import load_split, make_split, save_split, select
from .data.stats import class_pixel_counts, median_frequency_weights
from .data.transforms import Augmenter
from .losses import build_loss
from .metrics import ConfusionMatrix, ImageLevel, defect_probability, image_scores, probs_to_pred
from .models import create_model, load_encoder_weights, model_task

CHECKPOINT_FORMAT = "defectseg-checkpoint-v1"
IGNORE_INDEX = 255


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says what to change."""


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a temp file in the same folder, then rename (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a defectseg checkpoint safely (weights_only=True); a corrupt or foreign file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass runs/<name>/best.pt or last.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                         "the file is corrupt or not a torch checkpoint: use a best.pt/last.pt written by "
                         "`defectseg train`") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a defectseg checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
                         "to use bare weights, load them into a model with load_encoder_weights or "
                         "model.load_state_dict")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> tuple[nn.Module, C.RunConfig]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode, CPU)."""
    cfg = C.from_dict(ckpt["config"])
    n_in = input_channels(cfg)
    model = create_model(cfg.model.name, in_channels=n_in, num_classes=ckpt["num_classes"], **cfg.model.options)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{source}: the stored weights do not fit {cfg.model.name} with {n_in} input channels "
                         f"and {ckpt['num_classes']} outputs ({str(exc)[:300]}); the checkpoint's config and "
                         "weights disagree: re-train or re-save it") from exc
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


def to_input(images: torch.Tensor, cfg: C.DataConfig) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float: (x/255 - mean) / std. The Predictor does the same."""
    return (images.float() / 255.0 - cfg.mean) / cfg.std


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ----------------------------------------------------------------------------- data
def prepare_split(cfg: C.RunConfig, spec: DatasetSpec, run_dir: Path | None) -> dict[str, list[str]]:
    """The run's split: reuse run_dir/split.json, else the configured split file, else a new seeded split."""
    existing = run_dir / "split.json" if run_dir else None
    if existing and existing.is_file():
        return load_split(existing)
    if cfg.data.split_file:
        return load_split(cfg.data.split_file)
    return make_split(spec.samples, cfg.data.fractions, seed=cfg.train.seed)


def split_dataset(cfg: C.RunConfig, spec: DatasetSpec, samples: list, pool: list, cache: bool
                  ) -> SegmentationDataset | WithReference:
    """One split's dataset at the training size; in reference mode each image gets its reference
    (a file, or per group the first defect-free image of `pool`, the training samples)."""
    size = (cfg.data.size, cfg.data.size)
    ds = SegmentationDataset(samples, size=size, channels=cfg.data.channels, cache=cache,
                             num_classes=spec.num_classes, skip_bad=cfg.data.skip_bad)
    if cfg.data.reference:
        return WithReference(ds, group_references(ds.samples, pool, size, cfg.data.channels, cfg.data.reference))
    return ds


def build_datasets(cfg: C.RunConfig, spec: DatasetSpec, split: dict[str, list[str]]
                   ) -> dict[str, SegmentationDataset | WithReference]:
    pool = select(spec, split.get("train", []))
    out = {}
    for name in ("train", "val", "test"):
        samples = select(spec, split.get(name, []))
        if name == "train" and cfg.data.defective_only:
            samples = [s for s in samples if s.defective is not False]
        out[name] = split_dataset(cfg, spec, samples, pool, cfg.data.cache)
    return out


def input_channels(cfg: C.RunConfig) -> int:
    """Model input channels: the image's, doubled in reference mode (image + reference)."""
    return cfg.data.channels * (2 if cfg.data.reference else 1)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, cfg: C.RunConfig, device: torch.device,
                   num_classes: int, task: str = "segment", regions: bool = False, world: Dist = Dist()
                   ) -> dict[str, float]:
    """Whole-split metrics: one confusion matrix and one list of image scores, reduced once at the end.

    Defect-free images are included. Pixel metrics are computed at the training resolution.
    With `regions`, per-defect box metrics too (connected components of the thresholded map).
    """
    from .localize import RegionMetrics, defects_from_mask, find_defects

    model.eval()
    cm = ConfusionMatrix(max(2, num_classes), ignore_index=IGNORE_INDEX)
    img = ImageLevel()
    reg = RegionMetrics() if regions else None
    thr = cfg.infer.threshold
    for batch in loader:
        x = to_input(batch["image"].to(device), cfg.data)
        mask = batch["mask"].to(device).long()
        labels = (mask.flatten(1) > 0).any(1) & (mask.flatten(1) != IGNORE_INDEX).any(1)
        with _autocast(device, cfg.train.amp):
            logits = model(x).float()
        if task == "classify":
            img.update(torch.sigmoid(logits[:, 0]), labels)
            continue
        cm.update(probs_to_pred(logits, thr), mask)
        img.update(image_scores(logits), labels)
        if reg is not None:
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1)
            for p, m in zip(probs.cpu().numpy(), mask.cpu().numpy()):
                pred = find_defects(p, thr, cfg.infer.min_area, cfg.infer.connectivity, cfg.infer.score)
                reg.update(pred, defects_from_mask(np.where(m == IGNORE_INDEX, 0, m).astype(np.uint8)))
    if world.world > 1:
        cm.reduce_distributed()
        img.gather_distributed()
    out: dict[str, float] = {}
    if task == "segment":
        pm = cm.compute()
        out.update({"defect_iou": pm["defect_iou"], "miou": pm["miou"], "macc": pm["macc"],
                    "pixel_acc": pm["pixel_acc"], "mean_dice": pm["mean_dice"]})
        out.update({f"iou_{i}": v for i, v in enumerate(pm["iou"])})
    il = img.compute(thr)
    out.update({"image_auroc": il["auroc"], "image_ap": il["ap"], "image_acc": il["accuracy"],
                "image_precision": il["precision"], "image_recall": il["recall"]})
    if reg is not None:
        rm = reg.compute()
        out.update({"region_ap50": rm["ap50"], "region_ap": rm["ap"], "region_precision50": rm["precision@0.5"],
                    "region_recall50": rm["recall@0.5"], "count_mae": rm["count_mae"]})
    return {k: float(v) for k, v in out.items()}


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
# Validation metrics that can pick best.pt (higher is better).
MONITORS = ("miou", "defect_iou", "mean_dice", "macc", "pixel_acc", "image_auroc", "image_ap", "image_acc")


def _optimizer(cfg: C.TrainConfig, params) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](cfg, params)


def _scheduler(cfg: C.TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int):
    return SCHEDULES[cfg.schedule](cfg, opt, steps_per_epoch, total_steps)


def _set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    enc = getattr(model, "encoder", None)
    if enc is not None:
        for p in enc.parameters():
            p.requires_grad_(not frozen)


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


def train(cfg: C.RunConfig, resume: str | Path | None = None, quiet: bool = False,
          stop_after_epoch: int | None = None, overwrite: bool = False) -> RunResult:
    """Train per `cfg`, writing the run folder; resume from a last.pt exactly.

    A fresh run refuses a run folder that already holds a run unless `overwrite` (then it is cleared).
    stop_after_epoch: stop (as if interrupted) once that epoch's checkpoint is written; used by tests.
    """
    t_start = time.time()
    world = init_distributed(cfg.train.device)
    device = pick_device(cfg.train.device)
    if world.world > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(resume)
        cfg = C.from_dict(ckpt["config"])
    task = cfg.train.task
    if model_task(cfg.model.name) != task:
        raise ValueError(f"model {cfg.model.name!r} is a {model_task(cfg.model.name)} model but the task is "
                         f"{task!r}; pick a matching --model or --task")
    run_dir = cfg.run_dir
    if ckpt is None and (run_dir / "last.pt").exists():
        if not overwrite:
            raise ValueError(f"run folder {run_dir} already holds a run; continue it with --resume "
                             f"{run_dir / 'last.pt'}, pick another --name, or pass --overwrite")
        if world.main:
            for name in ("config.yaml", "split.json", "metrics.csv", "best.pt", "last.pt", "curves.png",
                         "report.md"):
                (run_dir / name).unlink(missing_ok=True)
        if world.world > 1:
            dist.barrier()
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        C.save_yaml(cfg, run_dir / "config.yaml")
    seed_everything(cfg.train.seed)

    spec = load_dataset(cfg.data.root, cfg.data.format, skip_bad=cfg.data.skip_bad,
                        allow_unlabeled=cfg.data.allow_unlabeled)
    split = prepare_split(cfg, spec, run_dir)
    if world.main:
        save_split(run_dir / "split.json", split, seed=cfg.train.seed, fractions=list(cfg.data.fractions),
                   data=str(cfg.data.root))
    sets = build_datasets(cfg, spec, split)
    if len(sets["train"]) == 0:
        raise ValueError(f"the training split of {cfg.data.root} is empty; check the data folder and split file")
    n_logits = num_logits(cfg, spec.class_names)

    model = create_model(cfg.model.name, in_channels=input_channels(cfg), num_classes=n_logits,
                         **cfg.model.options)
    if cfg.model.encoder_weights and ckpt is None:
        load_encoder_weights(model, cfg.model.encoder_weights)
    model.to(device)
    if cfg.train.channels_last:  # faster on CUDA, and for CheapNet training on the CPU too (1.5x measured)
        model.to(memory_format=torch.channels_last)

    weights = None
    if cfg.train.class_weights == "median-frequency":
        counts = class_pixel_counts(getattr(sets["train"], "dataset", sets["train"]), spec.num_classes)
        weights = torch.tensor(median_frequency_weights(counts), dtype=torch.float32)
    elif cfg.train.class_weights:
        raise ValueError(f"unknown class_weights {cfg.train.class_weights!r}; use median-frequency or leave unset")
    loss_fn = (nn.BCEWithLogitsLoss() if task == "classify"
               else build_loss(cfg.train.loss, class_weights=weights, **cfg.train.loss_options)).to(device)

    train_set = sets["train"]
    bs = cfg.train.batch_size
    shard = len(train_set) // world.world if world.world > 1 else len(train_set)
    steps_per_epoch = max(1, math.ceil(shard / bs))
    epochs = cfg.train.epochs
    if cfg.train.iterations:
        epochs = math.ceil(cfg.train.iterations / steps_per_epoch)
    total_steps = cfg.train.iterations or epochs * steps_per_epoch
    opt = _optimizer(cfg.train, model.parameters())
    sched = _scheduler(cfg.train, opt, steps_per_epoch, total_steps)
    ddp_model: nn.Module = model
    if world.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    start_epoch, step, best, best_epoch = 0, 0, -math.inf, -1
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _load_sched_state(sched, ckpt["scheduler"])
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        best, best_epoch = ckpt["best"], ckpt["best_epoch"]

    metrics_csv = run_dir / "metrics.csv"
    monitor = cfg.train.monitor if task == "segment" else "image_auroc"
    payload_base = {"config": cfg.to_dict(), "num_classes": n_logits, "class_names": spec.class_names,
                    "task": task}
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"

    with _Progress(quiet, world.main) as prog:
        prog.log(f"training {cfg.model.name} on {len(train_set)} images ({cfg.data.root}), "
                 f"{epochs} epochs x {steps_per_epoch} steps, device {device}")
        for epoch in range(start_epoch, epochs):
            if stop_after_epoch is not None and epoch > stop_after_epoch:
                break
            # Everything random in this epoch derives from (seed, epoch): exact resume at epoch boundaries.
            epoch_seed = cfg.train.seed * 100003 + epoch
            torch.manual_seed(epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            order = torch.randperm(len(train_set), generator=gen).tolist()
            order = order[world.rank: world.world * shard: world.world] if world.world > 1 else order
            loader = DataLoader(Subset(train_set, order), batch_size=bs, shuffle=False,
                                num_workers=cfg.data.workers, drop_last=False)
            augment = Augmenter(cfg.data.augment, seed=epoch_seed, ignore_index=IGNORE_INDEX)
            _set_encoder_frozen(model, epoch < cfg.model.freeze_encoder_epochs)
            ddp_model.train()
            prog.start(f"epoch {epoch + 1}/{epochs}", len(loader))
            t0, seen, loss_sum, n_batches = time.time(), 0, 0.0, 0
            for batch in loader:
                if cfg.train.iterations and step >= cfg.train.iterations:
                    break
                images = batch["image"].to(device, non_blocking=True)
                mask = batch["mask"].to(device, non_blocking=True).long()
                labels = (mask.flatten(1) > 0).any(1).float()
                x, mask = augment(images.float() / 255.0, mask)  # the Augmenter works in [0, 1]
                x = (x - cfg.data.mean) / cfg.data.std
                if cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device, cfg.train.amp):
                    logits = ddp_model(x)
                loss = loss_fn(logits.float()[:, 0], labels) if task == "classify" else loss_fn(logits.float(), mask)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; the last good "
                        f"checkpoint is {last_path if last_path.exists() else '(none yet)'}. Lower --lr, set "
                        "train.grad_clip, or check the data for corrupt images.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
                sched.step()
                step += 1
                seen += len(images)
                loss_sum += loss.item()
                n_batches += 1
                prog.step(f"loss {loss.item():.4f}  {seen / (time.time() - t0):.1f} img/s")
            train_loss = loss_sum / max(1, n_batches)
            if world.world > 1:
                t = torch.tensor([loss_sum, n_batches], dtype=torch.float64, device=device)
                dist.all_reduce(t)
                train_loss = float(t[0] / max(1.0, float(t[1])))
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "train_loss": train_loss,
                                   "seconds": round(time.time() - t0, 2),
                                   "img_per_s": round(seen * world.world / max(1e-9, time.time() - t0), 1)}
            val = {}
            is_last = epoch == epochs - 1 or (cfg.train.iterations and step >= cfg.train.iterations)
            if len(sets["val"]) and ((epoch + 1) % cfg.train.eval_every == 0 or is_last):
                val = evaluate_model(model, eval_loader(sets["val"], bs, cfg, world), cfg, device, n_logits, task,
                                     world=world)
            row.update({f"val_{k}": v for k, v in val.items()})
            # Without a validation split, best.pt follows the training loss; on epochs that are not
            # evaluated, nothing is compared.
            score = val.get(monitor, math.nan) if len(sets["val"]) else -train_loss
            if val and monitor not in val:
                raise ValueError(f"monitor {monitor!r} is not a validation metric; choose one of {', '.join(val)}")
            improved = not math.isnan(score) and score > best
            if improved:
                best, best_epoch = score, epoch + 1
            if world.main:
                _append_csv(metrics_csv, row)
                state = {**payload_base, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": _sched_state(sched), "epoch": epoch, "step": step, "best": best,
                         "best_epoch": best_epoch, "metrics": val}
                save_checkpoint(last_path, state)
                if improved or not best_path.exists():
                    save_checkpoint(best_path, state)
            prog.log(f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  " +
                     "  ".join(f"{k} {v:.3f}" for k, v in val.items() if k in (monitor, "miou", "image_auroc")))
            if is_last:
                break
    epochs_done = epoch + 1 if epochs > start_epoch else start_epoch
    test_metrics: dict[str, float] = {}
    if world.main and (stop_after_epoch is None or epochs_done >= epochs):
        best_model, _ = model_from_checkpoint(load_checkpoint(best_path))
        best_model.to(device)
        if len(sets["test"]):
            test_metrics = evaluate_model(best_model, eval_loader(sets["test"], bs, cfg), cfg, device,
                                          n_logits, task, regions=task == "segment")
        from .viz import plot_curves

        plot_curves(metrics_csv, run_dir / "curves.png")
        write_report(run_dir / "report.md", cfg, spec, split, test_metrics, best_epoch, time.time() - t_start)
    if world.world > 1:
        dist.barrier()
    return RunResult(run_dir, best_path, last_path, test_metrics, epochs_done, time.time() - t_start)


def eval_loader(ds, bs: int, cfg: C.RunConfig, world: Dist = Dist()) -> DataLoader:
    """In order, no padding; under DDP each rank takes every world-th sample (metrics are reduced after)."""
    return DataLoader(Subset(ds, range(world.rank, len(ds), world.world)), batch_size=bs,
                      num_workers=cfg.data.workers)


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


def write_report(path: Path, cfg: C.RunConfig, spec: DatasetSpec, split: dict[str, list[str]],
                 metrics: dict[str, float], best_epoch: int, seconds: float) -> None:
    lines = [f"# Run `{cfg.name}`", "",
             f"- model: `{cfg.model.name}` {cfg.model.options or ''}",
             f"- data: `{cfg.data.root}` (format {spec.format}, classes {spec.class_names}), "
             f"size {cfg.data.size}, augment {cfg.data.augment}",
             f"- split: train {len(split.get('train', []))} / val {len(split.get('val', []))} / "
             f"test {len(split.get('test', []))} (split.json)",
             f"- loss {cfg.train.loss}, {cfg.train.optimizer} lr {cfg.train.lr}, schedule {cfg.train.schedule}, "
             f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, seed {cfg.train.seed}",
             f"- best epoch (by validation {cfg.train.monitor}): {best_epoch}; wall time {seconds:.0f} s", "",
             "## Test split (whole split, defect-free images included, at training resolution)", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    if spec.skipped:
        lines += ["", f"## Skipped files ({len(spec.skipped)})", ""]
        lines += [f"- `{p}`: {why}" for p, why in spec.skipped]
    path.write_text("\n".join(lines) + "\n")


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, split_name: str = "test",
                        format: str | None = None, device: str = "auto", batch_size: int | None = None,
                        split_file: str | None = None) -> dict[str, float]:
    """Evaluate a checkpoint on one split of a dataset (the run's split.json when it is beside the checkpoint)."""
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    root = data or cfg.data.root
    spec = load_dataset(root, format or cfg.data.format, skip_bad=cfg.data.skip_bad,
                        allow_unlabeled=cfg.data.allow_unlabeled)
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
    dev = pick_device(device)
    pool = select(spec, split["train"]) if "train" in split else spec.samples
    ds = split_dataset(cfg, spec, select(spec, split[split_name]), pool, cache=False)
    model.to(dev)
    return evaluate_model(model, eval_loader(ds, batch_size or cfg.train.batch_size, cfg), cfg, dev,
                          ckpt["num_classes"], ckpt.get("task", "segment"), regions=ckpt.get("task") != "classify")
