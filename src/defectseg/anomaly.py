"""`defectseg train --task anomaly`: fit a memory-bank model (`patchcore-lite0`) on the good training images.

No gradient step. The run is a `Trainer`'s (the same run folder, split, data checks, threshold choice, test
evaluation and report.md), with the training loop replaced by one fit:

1. the patch vectors of every defect-free training image (the defective ones are left out, counted in the log and
   the report) at the training size, or, in crop mode (data.crop: the model then runs on native pixels, predict
   tiling images larger than infer.tile), of every whole image at its native size, mirror-padded as tile mode pads
   it, the padding's patches dropped;
2. the memory bank: a greedy coreset of them (`models.patchcore.greedy_coreset`) of model.options.bank_size rows
   (fewer when there are fewer patches);
3. the calibration: the maximum score of each good validation image (of the training images when the validation
   split has none, which scores them low: they are in the bank) gives center (their median) and spread (their
   spread, from the 16th to the 84th percentile; at least a twentieth of the center), so logit = (score - center) /
   spread puts a typical good image's most unusual patch near probability 0.5;
4. the threshold: by validation pixel F1 where the validation split has defective images, else by `val-frr` (at
   most infer.target_frr of the good validation images called NG), so a validation split without defects never
   picks a threshold that calls everything NG; then the test split is evaluated as predict runs it.

best.pt and last.pt are the same fitted model; there is nothing to resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from .checkpoint import build_model, save_checkpoint
from .data.io import defect_pixels
from .data.splits import select
from .models import PixelModel
from .models.patchcore import greedy_coreset
from .predictor import padded_chw
from .rundata import split_dataset
from .trainer import RunResult, Trainer

__all__ = ["AnomalyFitter", "fit"]


class AnomalyFitter(Trainer):
    """A `Trainer` whose training is the fit of a memory-bank model (module docstring)."""

    fits_anomaly = True

    def _build_model(self, ckpt: dict[str, Any] | None) -> None:
        if ckpt is not None:
            raise ValueError("an anomaly model is fitted in one pass and has nothing to resume; fit it again")
        # Fitted here, then run, evaluated and thresholded as a one-logit segmenter.
        self.task, self.n_logits = "segment", 1
        self.model = build_model(self.cfg, 1).to(self.device).eval()
        self.start_epoch, self.steps, self.best, self.best_epoch = 0, 0, math.nan, 1
        self.threshold_note, self.stopped, self.fit_note = "", "", ""

    def _threshold_rule(self) -> str:
        rule = self.cfg.infer.threshold_from
        return "val-frr" if rule == "val-f1" and not self.split_counts["val"]["defective"] else rule

    def run(self, stop_after_epoch: int | None = None) -> RunResult:
        cfg, net = self.cfg, self.model.net
        good = len(self.train_set)
        left_out = self.split_counts["train"]["images"] - good
        with self.progress as prog:
            prog.log(
                f"fitting {cfg.model.name} on {good} defect-free training images ({left_out} defective left out), "
                f"{'native size (crop mode)' if cfg.data.crop else f'size {cfg.data.size}'}, device {self.device}"
            )
            t0 = time.time()
            every = list(range(good))
            vectors = torch.cat([self._patches(batch, hw) for batch, hw in self._images(self.train_set, every)])
            seconds_features = time.time() - t0
            net.fit_projection(vectors, seed=cfg.train.seed)  # dims > 0: principal components of the good patches
            vectors = net.project(vectors)
            size = min(net.bank_rows, len(vectors))
            t1 = time.time()
            if net.coreset == "greedy":
                keep = greedy_coreset(vectors, size, seed=cfg.train.seed)
            else:
                keep = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(cfg.train.seed))[:size]
            seconds_coreset = time.time() - t1
            # the model is rebuilt with the bank's final size: the size is part of the checkpoint's config
            cfg.model.options = {**cfg.model.options, "bank_size": size}
            fitted = build_model(cfg, 1, pretrained=False)
            fitted.load_state_dict({k: v for k, v in self.model.state_dict().items() if "bank" not in k}, strict=False)
            fitted.net.set_bank(vectors[keep])
            self.model = fitted.to(self.device).eval()
            center, spread, on = self._calibration()
            self.model.net.set_calibration(center, spread)
            self.fit_note = (
                f"memory bank of {size:,} of the {len(vectors):,} patch vectors ({self.model.net.bank_dim} dims, "
                f"{self.model.net.bank.numel() * 4 / 2**20:.1f} MB; {net.coreset} coreset) of {good} defect-free "
                f"training images ({left_out} defective left out); features {seconds_features:.0f} s, coreset "
                f"{seconds_coreset:.0f} s; calibrated on {on}: center {center:.4g}, spread {spread:.4g}"
            )
            prog.log(self.fit_note)
        self._save(vectors.shape[0], size, time.time() - t0)
        return self.finish(1)

    def _images(self, dataset: Any, indices: list[int]) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
        """(uint8 images (B, C, H, W), the size of their content (h, w)) of a dataset's `indices`, in order: batches
        at the training size, or in crop mode each image alone at its native size, padded to the model's multiple
        as tile mode pads it."""
        if not self.cfg.data.crop:
            size = self.cfg.train.batch_size
            for start in range(0, len(indices), size):
                batch = torch.stack([dataset[i]["image"] for i in indices[start : start + size]])
                yield batch, tuple(batch.shape[2:])
            return
        for i in indices:
            image = dataset.arrays(i)[0]
            chw = padded_chw(image, self.model.net.size_multiple).copy()  # a copy: cached arrays are read-only
            yield torch.from_numpy(chw)[None], image.shape[:2]

    @torch.no_grad()
    def _patches(self, images: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """uint8 images (B, C, H, W) whose content is the top-left (h, w) -> the raw patch vectors of the patches
        that see content (B * h/s * w/s, dim; s the patch stride, rounded up)."""
        model: PixelModel = self.model
        f = model.net.features(images.to(self.device).float() * model.scale + model.shift)
        s = model.net.stride
        return model.net.flat(f[:, :, : -(-hw[0] // s), : -(-hw[1] // s)]).cpu()

    @torch.no_grad()
    def _calibration(self) -> tuple[float, float, str]:
        """(center, spread, what they were fitted on) from the maximum raw score of each good calibration image, at
        the training size (as predict resizes it) or native (crop mode, as predict tiles it)."""
        model: PixelModel = self.model
        model.net.set_calibration(0.0, 1.0)  # raw scores out
        val = split_dataset(self.cfg, self.spec, select(self.spec, self.split.get("val", [])), [], False)
        good = [i for i in range(len(val)) if not defect_pixels(val.arrays(i)[1]).any()]
        source, on = val, f"{len(good)} good validation images"
        if not good:  # the training images instead: in the bank, so they score low
            source, good = self.train_set, list(range(len(self.train_set)))
            on = f"{len(good)} training images (no good validation image: biased low)"
        maxima = [
            m
            for batch, (h, w) in self._images(source, good)
            for m in model(batch.to(self.device))[..., :h, :w].amax((1, 2, 3)).tolist()
        ]
        lo, mid, hi = np.percentile(maxima, [16, 50, 84])
        # at least a twentieth of the center: one or two calibration images give no spread, and logits of
        # thousands would then call every image NG or OK on a difference of rounding
        return float(mid), float(max((hi - lo) / 2, 0.05 * abs(mid), 1e-6)), on

    def _save(self, patches: int, size: int, seconds: float) -> None:
        """best.pt = last.pt: the fitted model, as a training would write it."""
        if not self.world.main:
            return
        state = {
            "config": self.cfg.to_dict(),
            "num_classes": 1,
            "class_names": self.spec.class_names,
            "task": "segment",  # how it runs: a one-logit segmenter
            "model": self.model.state_dict(),
            "optimizer": {},
            "scheduler": None,
            "epoch": 0,
            "step": 0,
            "best": math.nan,
            "best_epoch": 1,
            "metrics": {"patches": patches, "bank": size, "fit_seconds": round(seconds, 1)},
        }
        for path in (self.last_path, self.best_path):
            save_checkpoint(Path(path), state)
        C.save_yaml(self.cfg, self.run_dir / "config.yaml")  # with the bank's final size


def fit(cfg: C.RunConfig, quiet: bool = False, overwrite: bool = False) -> RunResult:
    """Fit per `cfg` (train.task "anomaly"), writing the run folder as `trainer.train` does; a folder that already
    holds a run is refused unless `overwrite`."""
    return AnomalyFitter(cfg, None, quiet, overwrite).run_released()
