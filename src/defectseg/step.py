"""One optimisation step: what the trainer runs for every batch and `defectseg benchmark --train` times."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.io import defect_pixels
from .data.transforms import Augmenter
from .runtime import autocast

__all__ = ["TrainStep", "TrainingError", "set_encoder_frozen"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message says what to change."""


@dataclass
class TrainStep:
    """One optimisation step. The trainer calls it for every batch; `defectseg benchmark --train` times it."""

    model: nn.Module  # a PixelModel (or DDP around one): raw pixels in, logits out
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    augment: Augmenter  # replaced every epoch by one seeded from (seed, epoch)
    scheduler: Any = None  # stepped once per iteration
    task: str = "segment"
    amp: torch.dtype | None = None  # autocast dtype, e.g. torch.bfloat16 (on the CPU only bf16, where it pays)
    channels_last: bool = False
    grad_clip: float | None = None
    defects: list = field(default_factory=list)  # SyntheticDefects / CopyPaste, after the augmentation
    image_head: bool = False  # the model's last output channel is an image logit (models.has_image_head)

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
        with autocast(x.device, self.amp):
            logits = self.model(x).float()
        if self.task == "classify":
            loss = self.loss_fn(logits[:, 0], labels)
        elif self.image_head:  # the segmentation loss, plus the image logit (constant over the image) on its label
            image = logits[:, -1].mean((1, 2))
            loss = self.loss_fn(logits[:, :-1], mask) + F.binary_cross_entropy_with_logits(image, labels)
        else:
            loss = self.loss_fn(logits, mask)
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
