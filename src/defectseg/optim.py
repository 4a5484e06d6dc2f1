"""Optimisers and learning-rate schedules by name: the registries `train.optimizer` and `train.schedule` name.

Each entry builds its object from the `TrainConfig` (`c`); schedules step once per iteration (MultiStep milestones
are given in epochs and converted here). The scheduler's state is stored in checkpoints as plain values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["OPTIMIZERS", "SCHEDULES", "load_schedule_state", "schedule_state"]

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda c, params: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda c, params: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda c, params: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
}
# (config, optimiser, steps per epoch, total steps) -> scheduler
SCHEDULES: dict[str, Callable[..., Any]] = {
    "none": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
    "multistep": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.MultiStepLR(
        opt, [m * per_epoch for m in c.milestones], c.gamma
    ),
    "cosine": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total)),
    # each parameter group peaks at its own learning rate (a pretrained encoder's is a fraction of the decoder's)
    "onecycle": lambda c, opt, per_epoch, total: torch.optim.lr_scheduler.OneCycleLR(
        opt, [g["lr"] for g in opt.param_groups], total_steps=max(1, total)
    ),
}


def schedule_state(s: Any) -> dict[str, Any]:
    """The scheduler's state dict as plain values: MultiStepLR keeps its milestones in a Counter, which
    weights_only loading refuses, so it is stored as a dict."""
    return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in s.state_dict().items()}


def load_schedule_state(s: Any, state: dict[str, Any]) -> None:
    """Restore what `schedule_state` stored."""
    if "milestones" in state:
        state = {**state, "milestones": Counter(state["milestones"])}
    s.load_state_dict(state)
