"""Segmentation losses for 1-logit (sigmoid) and N-logit (softmax) heads, with an ignore index.

Every function takes raw logits (B, C, H, W) and an integer mask (B, H, W) (a (B, 1, H, W) mask is accepted
and squeezed). C == 1 means a binary head: class 1 (defect) when sigmoid(logit) is high, class 0 (background)
otherwise. C == N >= 2 means a softmax head over classes 0..N-1 where 0 is background and 1..N-1 are defect
classes. Pixels whose target equals `ignore_index` (default `data.io.IGNORE_INDEX` = 255: "don't care"
borders, unlabelled regions) contribute nothing: neither to the loss sum nor to the count it is divided by. A batch
whose pixels are all ignored gives a loss of exactly 0 that still backpropagates (zero gradients), so a training
step never sees NaN.

Losses are computed in float32 even under autocast: the log/exp terms lose too much in bf16.

`build_loss(name, class_weights=None, **options)` builds an `nn.Module` (forward(logits, target) -> scalar)
by name; `LOSSES` holds the names. A loss module is registered beside its class with `@register_loss(name)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.io import IGNORE_INDEX

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
LOSSES: tuple[str, ...] = ()  # registered names, sorted; kept in step by register_loss

_M = TypeVar("_M", bound=type[nn.Module])


def register_loss(name: str) -> Callable[[_M], _M]:
    """Class decorator: make the loss module buildable as `build_loss(name, **options)`."""

    def deco(cls: _M) -> _M:
        global LOSSES
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered; register it under another name")
        _REGISTRY[name] = cls
        LOSSES = tuple(sorted(_REGISTRY))
        return cls

    return deco


# --------------------------------------------------------------------------------------------------------------
# input checks and shared helpers
# --------------------------------------------------------------------------------------------------------------


def _prepare(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes and labels; return (float32 logits (B,C,H,W), target (B,H,W) long with ignored
    pixels set to 0, valid (B,H,W) bool)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, C, H, W), got shape {tuple(logits.shape)}")
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 3 or target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"target must be (B, H, W) matching logits (B, C, H, W) = {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}; resize the mask with nearest-neighbour interpolation to the logits' size"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class ids (got dtype {target.dtype}); convert the mask with .long() "
            "(0 = background, 1..N-1 = defect classes, ignore_index = don't care)"
        )
    target = target.long()
    num_classes = max(logits.shape[1], 2)  # a 1-logit head still has two classes
    valid = target != ignore_index
    # One host sync per call; an out-of-range label would otherwise give a CUDA device-side assert or,
    # worse for a 1-logit head, a silently wrong loss (a mask saved as 0/255 is the usual culprit).
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        found = torch.unique(target[bad]).tolist()[:10]
        raise ValueError(
            f"target holds class ids {found} outside 0..{num_classes - 1} for a {logits.shape[1]}-logit head "
            f"(ignore_index={ignore_index}); binarise 0/255 masks to 0/1, or build the model with more classes"
        )
    return logits.float(), target.masked_fill(~valid, 0), valid


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Mean of per-pixel losses (B,H,W) over valid pixels; 0 (with a graph) when none is valid."""
    total = (per_pixel * valid).sum()
    return total / valid.sum().clamp_min(1)


def _check_smooth(smooth: float) -> None:
    if not smooth > 0:
        raise ValueError(f"dice smooth must be > 0 (got {smooth}); it keeps the loss finite for all-background batches")


# --------------------------------------------------------------------------------------------------------------
# loss functions
# --------------------------------------------------------------------------------------------------------------


def bce_loss(
    logits: Tensor, target: Tensor, pos_weight: float | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Binary cross-entropy with logits, averaged over valid pixels.

    logits (B, 1, H, W): sigmoid BCE against target == 1 (identical to
    `F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=...)` when nothing is ignored).
    logits (B, N, H, W), N >= 2: one-vs-rest BCE of every channel against the one-hot target, averaged over
    channels and valid pixels. `pos_weight` multiplies the positive terms (defect pixels for one logit; the
    pixels of each channel's own class for N) to counter class imbalance, e.g. n_background / n_defect.
    target (B, H, W) long. Returns a scalar.
    """
    logits, target, valid = _prepare(logits, target, ignore_index)
    if logits.shape[1] == 1:
        onehot = target.unsqueeze(1).float()
    else:
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits, onehot, pos_weight=pw, reduction="none")
    return _masked_mean(per.mean(dim=1), valid)


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Soft Dice loss 1 - (2·Σ p·t + s) / (Σ p + Σ t + s), sums over the whole batch's valid pixels.

    The sums run over all images of the batch at once (not per image and then averaged), so an image without
    defects does not produce its own 0/0-like term. Only defect classes are scored:
    logits (B, 1, H, W): p = sigmoid(logit), t = (target == 1);
    logits (B, N, H, W): p = softmax over N, one Dice per foreground class 1..N-1, and the mean of those.

    All-background batch (Σ t = 0): the loss is Σ p / (Σ p + s), which is finite, in [0, 1), falls to 0 as the
    predicted defect probability falls to 0, and with smooth=1 and predictions near 0 it is near 0 (a correct
    empty prediction is not punished); if every pixel is ignored the loss is 0. `smooth` must be > 0.
    target (B, H, W) long. Returns a scalar.
    """
    _check_smooth(smooth)
    logits, target, valid = _prepare(logits, target, ignore_index)
    mask = valid.unsqueeze(1).float()
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits)
        onehot = target.unsqueeze(1).float()
    else:
        probs = torch.softmax(logits, dim=1)[:, 1:]
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    probs = probs * mask
    onehot = onehot * mask
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return 1 - dice.mean()


def bce_dice_loss(
    logits: Tensor,
    target: Tensor,
    pos_weight: float | None = None,
    smooth: float = 1.0,
    bce_weight: float = 0.8,
    dice_weight: float = 0.2,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """bce_weight · bce_loss + dice_weight · dice_loss (see both). BCE gives dense, well-conditioned gradients
    from the first step; Dice keeps the rare defect pixels from being swamped by background. Returns a scalar."""
    return bce_weight * bce_loss(logits, target, pos_weight, ignore_index) + dice_weight * dice_loss(
        logits, target, smooth, ignore_index
    )


def _two_class_logits(logits: Tensor) -> Tensor:
    """(B,1,H,W) defect logit -> (B,2,H,W) [0, logit]: softmax over it equals the sigmoid of the logit."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


def ce_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over classes, optionally class-weighted, averaged over valid pixels.

    logits (B, N, H, W); a 1-logit head (B, 1, H, W) is treated as two classes with logits [0, z], which makes
    this exactly the BCE of z (so the same call and the same 2-entry `weight` work for both heads).
    weight (N,) (or (2,) for one logit): per-class weights, e.g. median-frequency balancing
    w_c = median(f) / f_c computed on the training split; the mean is then Σ w_{t_i}·ce_i / Σ w_{t_i} over valid
    pixels (torch's convention). target (B, H, W) long. Returns a scalar; 0 if every pixel is ignored.
    """
    logits, target, valid = _prepare(logits, target, ignore_index)
    if logits.shape[1] == 1:
        logits = _two_class_logits(logits)
    num_classes = logits.shape[1]
    if weight is not None:
        if weight.ndim != 1 or weight.numel() != num_classes:
            raise ValueError(
                f"class weight must have one entry per class ({num_classes}, a 1-logit head counts as 2), "
                f"got shape {tuple(weight.shape)}"
            )
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    per = F.cross_entropy(logits, target, reduction="none")
    if weight is None:
        return _masked_mean(per, valid)
    pixel_w = weight[target] * valid
    denom = pixel_w.sum()
    # Ignored pixels have weight 0, so the numerator is 0 whenever the denominator is: divide by 1 then.
    return (per * pixel_w).sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = 0.25, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Focal loss (Lin et al. 2017) -α_t (1 - p_t)^γ log p_t, averaged over valid pixels.

    logits (B, 1, H, W): sigmoid focal loss, p_t = sigmoid(z) on defect pixels and 1 - sigmoid(z) on background.
    logits (B, N, H, W): softmax focal loss, p_t = softmax probability of the pixel's true class.
    α weighs defect pixels (class >= 1) and 1 - α background (class 0), as in the binary RetinaNet form, so a
    2-logit head with logits [0, z] gives the same loss as a 1-logit head with z; alpha=None weighs all by 1.
    Normalised by the number of valid pixels (not by the defect count as in RetinaNet), so the scale does
    not jump between batches with few and many defects. gamma=0, alpha=None is plain CE.
    target (B, H, W) long. Returns a scalar.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0 (got {gamma})")
    if alpha is not None and not 0 <= alpha <= 1:
        raise ValueError(f"focal alpha must be in [0, 1] or None (got {alpha})")
    logits, target, valid = _prepare(logits, target, ignore_index)
    if logits.shape[1] == 1:
        # Both forms reduce to the same numbers; the sigmoid one avoids building the 2-channel tensor.
        z = logits[:, 0]
        t = target.float()
        log_pt = -F.binary_cross_entropy_with_logits(z, t, reduction="none")
    else:
        log_pt = torch.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1))[:, 0]
    # 1 - p_t via expm1 keeps precision near p_t = 1; the floor keeps d/dp (1 - p_t)^γ finite there for γ < 1.
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(1e-12)
    per = -(one_minus_pt**gamma) * log_pt
    if alpha is not None:
        per = per * torch.where(target >= 1, alpha, 1 - alpha)
    return _masked_mean(per, valid)


# --------------------------------------------------------------------------------------------------------------
# modules and registry
# --------------------------------------------------------------------------------------------------------------


@register_loss("bce")
class BCELoss(nn.Module):
    """Module form of `bce_loss`: forward(logits (B,C,H,W), target (B,H,W)) -> scalar."""

    def __init__(self, pos_weight: float | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.pos_weight, self.ignore_index = pos_weight, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return bce_loss(logits, target, self.pos_weight, self.ignore_index)


@register_loss("dice")
class DiceLoss(nn.Module):
    """Module form of `dice_loss`: forward(logits (B,C,H,W), target (B,H,W)) -> scalar."""

    def __init__(self, smooth: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        _check_smooth(smooth)
        self.smooth, self.ignore_index = smooth, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(logits, target, self.smooth, self.ignore_index)


@register_loss("bce-dice")
class BCEDiceLoss(nn.Module):
    """Module form of `bce_dice_loss`: forward(logits (B,C,H,W), target (B,H,W)) -> scalar."""

    def __init__(
        self,
        pos_weight: float | None = None,
        smooth: float = 1.0,
        bce_weight: float = 0.8,
        dice_weight: float = 0.2,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        _check_smooth(smooth)
        self.pos_weight, self.smooth, self.ignore_index = pos_weight, smooth, ignore_index
        self.bce_weight, self.dice_weight = bce_weight, dice_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return bce_dice_loss(
            logits, target, self.pos_weight, self.smooth, self.bce_weight, self.dice_weight, self.ignore_index
        )


@register_loss("ce")
class CELoss(nn.Module):
    """Module form of `ce_loss`; class weights (N,) are a buffer, so `.to(device)` moves them and they are
    saved in the state dict. forward(logits (B,C,H,W), target (B,H,W)) -> scalar."""

    weight: Tensor | None

    def __init__(self, weight: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32).detach().clone()
            if weight.ndim != 1 or not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
                raise ValueError(f"class weights must be a 1-D tensor of finite values >= 0, got {weight.tolist()}")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return ce_loss(logits, target, self.weight, self.ignore_index)


@register_loss("focal")
class FocalLoss(nn.Module):
    """Module form of `focal_loss`: forward(logits (B,C,H,W), target (B,H,W)) -> scalar."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.gamma, self.alpha, self.ignore_index = gamma, alpha, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(logits, target, self.gamma, self.alpha, self.ignore_index)


def build_loss(name: str, class_weights: Tensor | None = None, **options: Any) -> nn.Module:
    """Build a loss module by name (one of `LOSSES`).

    class_weights (N,): per-class weights for "ce" only (a 1-logit head takes 2: background, defect); other
    losses reject them (use pos_weight= for "bce"/"bce-dice", alpha= for "focal"). options: the keyword
    arguments of the matching function, e.g. pos_weight, smooth, bce_weight, dice_weight, gamma, alpha,
    ignore_index. The module's forward(logits (B,C,H,W), target (B,H,W)) returns a scalar.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    if class_weights is not None:
        if name != "ce":
            raise ValueError(
                f"class_weights apply to the 'ce' loss only, not {name!r}; use loss 'ce', or pos_weight= for "
                "'bce'/'bce-dice' and alpha= for 'focal'"
            )
        options = {**options, "weight": class_weights}
    for key, value in options.items():  # a NaN weight would train on a NaN loss from the first step
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"train.loss_options.{key} is {value}; give a finite number")
    try:
        return _REGISTRY[name](**options)
    except TypeError as exc:
        raise ValueError(f"bad option for loss {name!r}: {exc}") from exc
