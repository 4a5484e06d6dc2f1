"""Training: `Trainer.__init__` sets up (run folder, data, model, optimiser), `run` loops over epochs of
`train_epoch` (each batch one `step.TrainStep`), `validate`, `checkpoint`, and `finish` chooses the operating
threshold on the validation split, evaluates best.pt on the test split and writes the report.

A run folder `runs/<name>/` holds config.yaml, split.json, metrics.csv (one row per epoch), best.pt and last.pt
(`checkpoint`), curves.png and report.md (`runfolder`). The run's data and each epoch's draws come from `rundata`;
evaluation goes through the predict path (`evaluate`).

Exact resume: every source of randomness is derived from (seed, epoch) at the start of each epoch
(shuffling, augmentation, dropout), and checkpoints are taken at epoch ends, so a run stopped after
epoch k and resumed ends with the same weights as one that ran through.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import config as C
from .checkpoint import build_model, load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from .data.dataset import RandomCrops
from .data.defects import CopyPaste, SyntheticDefects
from .data.io import IGNORE_INDEX
from .data.splits import describe_split
from .data.stats import class_pixel_counts, median_frequency_weights
from .data.transforms import Augmenter
from .evaluate import calibrate_threshold, evaluate_model
from .losses import build_loss
from .models import PixelModel, has_image_head, load_encoder_weights, model_task
from .optim import OPTIMIZERS, SCHEDULES, load_schedule_state, schedule_state
from .rundata import epoch_order, load_run_data
from .runfolder import RUN_FILES, RunLock, append_csv, drop_rows_after, monitor_of, write_report
from .runtime import init_distributed, pick_device, seed_everything
from .step import TrainingError, TrainStep, set_encoder_frozen
from .viz import plot_curves

__all__ = ["RunResult", "Trainer", "TrainingError", "init_head_prior", "num_logits", "train"]


def num_logits(cfg: C.RunConfig, class_names: list[str]) -> int:
    """1 sigmoid logit for binary data (unless the loss is CE: then 2 softmax logits); N for N classes."""
    if cfg.train.task == "classify":
        return 1
    if cfg.model.num_classes:
        return cfg.model.num_classes
    n = len(class_names)
    return 1 if n == 2 and cfg.train.loss != "ce" else n


def param_groups(model: PixelModel, train: C.TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the network's `encoder` (a pretrained one learns at train.encoder_lr_scale
    times the learning rate, so fine-tuning does not wash out what ImageNet taught it) and everything else."""
    encoder = getattr(model.net, "encoder", None)
    enc = list(encoder.parameters()) if isinstance(encoder, nn.Module) else []
    ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": train.lr}]
    if enc:
        groups.append({"params": enc, "lr": train.lr * train.encoder_lr_scale})
    return groups


class _Progress:
    """A rich progress bar with loss and throughput, or one line per epoch in quiet mode."""

    def __init__(self, quiet: bool, enabled: bool) -> None:
        self.quiet, self.enabled = quiet, enabled
        self.bar = None
        if enabled and not quiet:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )

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
# A run counted in steps (train.iterations) has at most this many epochs, each validated and checkpointed.
STEP_EPOCHS = 50


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

    fits_anomaly = False  # task "anomaly" is `anomaly.AnomalyFitter`'s, a subclass with its own loop

    def __init__(
        self, cfg: C.RunConfig, resume: str | Path | None = None, quiet: bool = False, overwrite: bool = False
    ) -> None:
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
            raise ValueError(
                f"model {cfg.model.name!r} is a {model_task(cfg.model.name)} model but the task is "
                f"{self.task!r}; pick a matching --model or --task"
            )
        if self.task == "anomaly" and not self.fits_anomaly:
            raise ValueError(
                "task anomaly is fitted in one pass, not trained, and a fitted model has nothing to resume: "
                "fit it with `defectseg train --task anomaly` (anomaly.fit)"
            )
        self.run_dir = cfg.run_dir
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "best.pt"
        self._prepare_run_folder(fresh=ckpt is None, overwrite=overwrite)
        if ckpt is not None and self.world.main:
            drop_rows_after(self.run_dir / "metrics.csv", ckpt["epoch"] + 1)
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
                raise ValueError(
                    f"cannot write the run folder {self.run_dir}: {exc.strerror}; choose a writable --out-dir"
                ) from None
        if fresh and self.last_path.exists():
            if not overwrite:
                raise ValueError(
                    f"run folder {self.run_dir} already holds a run; continue it with --resume "
                    f"{self.last_path}, pick another --name, or pass --overwrite"
                )
            if self.world.main:
                for name in RUN_FILES:
                    (self.run_dir / name).unlink(missing_ok=True)
            if self.world.world > 1:
                dist.barrier()
        if self.world.main:
            C.save_yaml(self.cfg, self.run_dir / "config.yaml")  # the folder was made writable above

    def _build_data(self, resumed: bool) -> None:
        d = load_run_data(self.cfg, self.run_dir, resumed, self.world.main)
        self.spec, self.split, self.train_set, self.defective = d.spec, d.split, d.train_set, d.defective
        self.eval_sets, self.skipped, self.split_counts = d.eval_sets, d.skipped, d.counts

    def _build_model(self, ckpt: dict[str, Any] | None) -> None:
        cfg, world = self.cfg, self.world
        self.n_logits = num_logits(cfg, self.spec.class_names)
        self.model = build_model(cfg, self.n_logits, pretrained=ckpt is None)  # a resumed run has its weights
        m = self.model.size_multiple
        if cfg.data.crop and cfg.data.crop % m:
            raise ValueError(
                f"data.crop {cfg.data.crop} must be a multiple of {m} for {cfg.model.name}; e.g. "
                f"{max(m, cfg.data.crop // m * m)}"
            )
        if cfg.data.shape and any(n % m for n in cfg.data.shape):
            raise ValueError(
                f"data.shape {list(cfg.data.shape)} must be multiples of {m} for {cfg.model.name}; "
                f"e.g. {[max(m, n // m * m) for n in cfg.data.shape]}"
            )
        if cfg.model.encoder_weights and ckpt is None:
            load_encoder_weights(self.model.net, cfg.model.encoder_weights)
        if cfg.train.prior_init and ckpt is None and self.task == "segment" and hasattr(self.model.net, "head"):
            init_head_prior(self.model.net.head, self._class_counts)
        self.model.to(self.device)
        if cfg.train.channels_last:  # faster on CUDA, and for CheapNet training on the CPU too (1.5x measured)
            self.model.to(memory_format=torch.channels_last)
        shard = len(self.train_set) // world.world if world.world > 1 else len(self.train_set)
        self.steps_per_epoch = max(1, math.ceil(shard / cfg.train.batch_size))
        self.draws = len(self.train_set)  # per epoch, before sharding
        self.epochs = cfg.train.epochs
        if cfg.train.iterations:
            # On a tiny set every step would be an epoch, validated and checkpointed (900 of them for 6 images,
            # most of the run's time): an epoch of a step-counted run is at least 1/STEP_EPOCHS of its steps,
            # drawing the set several times.
            floor = math.ceil(cfg.train.iterations / STEP_EPOCHS)
            if floor > self.steps_per_epoch:
                self.steps_per_epoch = floor
                self.draws = floor * cfg.train.batch_size * world.world
            self.epochs = math.ceil(cfg.train.iterations / self.steps_per_epoch)
        total_steps = cfg.train.iterations or self.epochs * self.steps_per_epoch
        opt = OPTIMIZERS[cfg.train.optimizer](cfg.train, param_groups(self.model, cfg.train))
        sched = SCHEDULES[cfg.train.schedule](cfg.train, opt, self.steps_per_epoch, total_steps)
        ddp: nn.Module = self.model
        if world.world > 1:
            ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = TrainStep(
            ddp,
            self._loss().to(self.device),
            opt,
            Augmenter("none"),
            sched,
            self.task,
            torch.bfloat16 if cfg.train.amp else None,
            cfg.train.channels_last,
            cfg.train.grad_clip,
            image_head=has_image_head(cfg.model.name, cfg.model.options),
        )
        self.start_epoch, self.steps, self.best, self.best_epoch = 0, 0, -math.inf, -1
        self.threshold_note = ""  # how _choose_threshold chose the operating threshold (for report.md)
        self.stopped = ""  # why the run ended early (Ctrl-C), for report.md
        self.fit_note = ""  # what an anomaly fit did (anomaly.py), for report.md
        if ckpt is not None:
            load_weights(self.model, ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            load_schedule_state(sched, ckpt["scheduler"])
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
    def run_released(self, stop_after_epoch: int | None = None) -> RunResult:
        """`run`, then release the run folder's lock whatever happened."""
        try:
            return self.run(stop_after_epoch)
        finally:
            if self.lock is not None:
                self.lock.release()

    def run(self, stop_after_epoch: int | None = None) -> RunResult:
        """Train from `start_epoch`; stop_after_epoch: stop (as if interrupted) once that epoch's checkpoint is
        written (tests use it)."""
        cfg = self.cfg
        epoch = self.start_epoch - 1
        try:
            with self.progress as prog:
                prog.log(
                    f"training {cfg.model.name} on {len(self.train_set)} images ({cfg.data.root}), "
                    f"{self.epochs} epochs x {self.steps_per_epoch} steps, device {self.device}"
                )
                prog.log(f"split: {describe_split(self.split_counts)}")
                for epoch in range(self.start_epoch, self.epochs):
                    if stop_after_epoch is not None and epoch > stop_after_epoch:
                        epoch -= 1
                        break
                    row = self.train_epoch(epoch)
                    is_last = epoch == self.epochs - 1 or bool(
                        cfg.train.iterations and self.steps >= cfg.train.iterations
                    )
                    val = self.validate() if is_last or (epoch + 1) % cfg.train.eval_every == 0 else {}
                    self.checkpoint(epoch, {**row, **{f"val_{k}": v for k, v in val.items()}}, val)
                    if is_last:
                        break
        except KeyboardInterrupt:
            # Ctrl-C (or SIGTERM) mid-run: best.pt so far still gets its threshold, test figures and report.md,
            # so the run folder is as usable as a finished one, and says it stopped early.
            if not self.best_path.is_file() or self.world.world > 1:
                raise
            print(
                f"\nstopped during epoch {epoch + 1} of {self.epochs}: choosing best.pt's threshold (epoch "
                f"{self.best_epoch}) and writing the report; Ctrl-C again skips that",
                file=sys.stderr,
                flush=True,
            )
            self.stopped = (
                f"by the user during epoch {epoch + 1} of {self.epochs}; best.pt from epoch {self.best_epoch}"
            )
            return self.finish(epoch)
        epochs_done = epoch + 1
        finished = stop_after_epoch is None or epochs_done >= self.epochs
        return self.finish(epochs_done, evaluate_test=finished)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the (sharded) training set; returns the epoch's row of metrics.csv."""
        cfg, world, step = self.cfg, self.world, self.step
        # Everything random in this epoch derives from (seed, epoch): exact resume at epoch boundaries.
        epoch_seed = cfg.train.seed * 100003 + epoch
        torch.manual_seed(epoch_seed)
        order = epoch_order(
            len(self.train_set),
            self.defective,
            cfg.data.defective_share,
            torch.Generator().manual_seed(epoch_seed),
            self.draws,
        )
        if world.world > 1:
            order = order[world.rank : world.world * (len(order) // world.world) : world.world]
        data = (
            RandomCrops(self.train_set, order, cfg.data.crop, cfg.data.defect_crops, epoch_seed)
            if cfg.data.crop
            else Subset(self.train_set, order)
        )
        loader = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=False, num_workers=cfg.data.workers)
        step.augment = Augmenter(cfg.data.augment, seed=epoch_seed, ignore_index=IGNORE_INDEX)
        step.defects = [
            f
            for f in (
                SyntheticDefects(cfg.data.synthetic_defects, seed=epoch_seed + 1),
                CopyPaste(cfg.data.copy_paste, seed=epoch_seed + 2),
            )
            if f.p > 0
        ]
        step.model.train()
        set_encoder_frozen(self.model.net, epoch < cfg.model.freeze_encoder_epochs)
        self.progress.start(f"epoch {epoch + 1}/{self.epochs}", len(loader))
        t0, seen, loss_sum, n_batches = time.time(), 0, 0.0, 0
        for batch in loader:
            if cfg.train.iterations and self.steps >= cfg.train.iterations:
                break
            try:
                loss = step(
                    batch["image"].to(self.device, non_blocking=True), batch["mask"].to(self.device, non_blocking=True)
                )
            except TrainingError as exc:
                last = self.last_path if self.last_path.exists() else "(none yet)"
                raise TrainingError(
                    f"{exc} at epoch {epoch + 1}, step {self.steps + 1}; the last good checkpoint "
                    f"is {last}. Lower --lr, set train.grad_clip, or check the data for corrupt "
                    "images."
                ) from None
            self.steps, seen, loss_sum, n_batches = (
                self.steps + 1,
                seen + len(batch["image"]),
                loss_sum + loss,
                n_batches + 1,
            )
            self.progress.step(f"loss {loss:.4f}  {seen / (time.time() - t0):.1f} img/s")
        if world.world > 1:
            t = torch.tensor([loss_sum, n_batches], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            loss_sum, n_batches = float(t[0]), int(t[1])
        seconds = time.time() - t0
        return {
            "epoch": epoch + 1,
            "lr": step.optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(1, n_batches),
            "seconds": round(seconds, 2),
            "img_per_s": round(seen * world.world / max(1e-9, seconds), 1),
        }

    def validate(self) -> dict[str, float]:
        """Whole validation split metrics (empty without a validation split)."""
        if not len(self.eval_sets["val"]):
            return {}
        return evaluate_model(
            self.model,
            self.eval_sets["val"],
            self.cfg,
            self.device,
            self.n_logits,
            self.task,
            world=self.world,
            batch_size=self.cfg.train.batch_size,
        )

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
            append_csv(self.run_dir / "metrics.csv", row)
            state = {
                "config": self.cfg.to_dict(),
                "num_classes": self.n_logits,
                "class_names": self.spec.class_names,
                "task": self.task,
                "model": self.model.state_dict(),
                "optimizer": self.step.optimizer.state_dict(),
                "scheduler": schedule_state(self.step.scheduler),
                "epoch": epoch,
                "step": self.steps,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "metrics": val,
            }
            save_checkpoint(self.last_path, state)
            if improved or not self.best_path.exists():
                save_checkpoint(self.best_path, state)
        self.progress.log(
            f"epoch {epoch + 1}/{self.epochs}  loss {row['train_loss']:.4f}  "
            + "  ".join(f"{k} {v:.3f}" for k, v in val.items() if k in (monitor, "miou", "image_auroc"))
        )

    def finish(self, epochs_done: int, evaluate_test: bool = True) -> RunResult:
        """Evaluate best.pt on the test split (with per-defect metrics), plot the curves, write report.md."""
        test_metrics: dict[str, float] = {}
        if self.world.main and evaluate_test:
            best_model, _ = model_from_checkpoint(load_checkpoint(self.best_path))
            self._choose_threshold(best_model)
            if len(self.eval_sets["test"]):
                test_metrics = evaluate_model(
                    best_model,
                    self.eval_sets["test"],
                    self.cfg,
                    self.device,
                    self.n_logits,
                    self.task,
                    regions=self.task == "segment",
                    batch_size=self.cfg.train.batch_size,
                )
            if (self.run_dir / "metrics.csv").is_file():  # an anomaly fit has no epochs to draw
                plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png")
            used = {
                "train": len(getattr(self.train_set, "dataset", self.train_set).samples),
                **{name: len(ev.dataset.samples) for name, ev in self.eval_sets.items()},
            }
            write_report(
                self.run_dir / "report.md",
                self.cfg,
                self.spec,
                used,
                test_metrics,
                self.best_epoch,
                time.time() - self.t_start,
                self.threshold_note,
                self.skipped,
                self.stopped,
                self.fit_note,
            )
        if self.world.world > 1:
            dist.barrier()
        return RunResult(
            self.run_dir, self.best_path, self.last_path, test_metrics, epochs_done, time.time() - self.t_start
        )

    def _threshold_rule(self) -> str:
        """infer.threshold_from, but val-frr where val-f1 is asked of a model that saw no real defect: it is set on
        good parts (target_frr of them rejected)."""
        rule = self.cfg.infer.threshold_from
        return "val-frr" if rule == "val-f1" and self.cfg.data.defect_free_only else rule

    def _choose_threshold(self, model: PixelModel) -> None:
        """With infer.threshold_from set, pick the operating threshold on the validation split and store it in
        best.pt and config.yaml, so evaluate, predict and the test figures below use it."""
        rule = self._threshold_rule()
        if rule == "fixed" or self.task != "segment":
            return
        if not len(self.eval_sets["val"]):
            self.threshold_note = f"kept {self.cfg.infer.threshold:.4g}: the validation split is empty"
            return
        thr, how = calibrate_threshold(
            model,
            self.eval_sets["val"],
            self.cfg,
            self.device,
            self.n_logits,
            rule,
            self.cfg.infer.target_frr,
            self.cfg.train.batch_size,
        )
        self.threshold_note = how if rule == self.cfg.infer.threshold_from else f"{rule} instead: {how}"
        if how.startswith("kept"):  # a warning the user must see, even with -q
            print(f"warning: threshold {how}", file=sys.stderr, flush=True)
        else:
            self.progress.log(f"threshold {thr:.4f} chosen on the validation split ({rule}: {how})")
        self.cfg.infer.threshold = thr
        ckpt = load_checkpoint(self.best_path)
        ckpt["config"]["infer"]["threshold"] = thr
        save_checkpoint(self.best_path, ckpt)
        C.save_yaml(self.cfg, self.run_dir / "config.yaml")


def train(
    cfg: C.RunConfig,
    resume: str | Path | None = None,
    quiet: bool = False,
    stop_after_epoch: int | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train per `cfg`, writing the run folder; resume from a last.pt exactly (see `Trainer`).

    A fresh run refuses a run folder that already holds a run unless `overwrite` (then it is cleared).
    stop_after_epoch: stop (as if interrupted) once that epoch's checkpoint is written; used by tests.
    """
    return Trainer(cfg, resume, quiet, overwrite).run_released(stop_after_epoch)
