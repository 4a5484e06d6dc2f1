"""Model cost: parameters and multiply-accumulates (MACs), counted from the layers that do the work.

MACs count conv, grouped/depthwise conv, transposed conv and linear layers (bias, BatchNorm and
activations are not multiply-accumulates and are left out, as FlopCounterMode does), and what a module computes
with functions rather than layers where it says so (`functional_macs(input_shape)`: patchcore-lite0's distances to
its memory bank and its smoothing). A transposed conv
multiplies every *input* element by its kernel slice: MACs = B * C_in * H_in * W_in * (C_out/groups) * k².
Profilers such as thop count it over the output instead, which over-counts strided transposed convs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_macs", "count_params", "macs_per_image"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return inp.numel() * (module.out_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of `input_shape` (B, C, H, W).

    Runs the model once on the CPU (meta tensors do not run BatchNorm in eval everywhere) in eval mode.
    """
    total = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, args[0], out)
        if hasattr(module, "functional_macs"):
            total += module.functional_macs(tuple(args[0].shape))

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds) or hasattr(m, "functional_macs")
    ]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def macs_per_image(model: nn.Module, channels: int, size: int) -> int:
    """`count_macs` of a (1, channels, size, size) input, counted at a small size and scaled when that is exact.

    For a fully convolutional net whose every level divides exactly, MACs grow as size²; this is checked by
    counting at s0 and 2*s0 (s0: the first multiple of size_multiple >= 64) and used only when size is a multiple
    of s0 and macs(2*s0) == 4*macs(s0) (never for nets with linear heads). Saves a full-size CPU forward of huge models.
    """
    multiple = int(getattr(model, "size_multiple", 1))
    s0 = multiple * -(-64 // multiple)  # the smallest multiple of size_multiple >= 64
    if size >= 4 * s0 and size % s0 == 0:
        try:
            small = count_macs(model, (1, channels, s0, s0))
            double = count_macs(model, (1, channels, 2 * s0, 2 * s0))
        except ValueError:  # a model with a larger minimum input: count at full size
            small, double = 0, 1
        if double == 4 * small:
            return small * (size // s0) ** 2
    return count_macs(model, (1, channels, size, size))
