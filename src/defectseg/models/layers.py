"""Blocks shared by several model families."""
from __future__ import annotations

import torch
from torch import nn


def nearest_valid_size(size: int, multiple: int) -> int:
    """The multiple of `multiple` closest to `size` (ties go up; never below `multiple`)."""
    down = max(multiple, (size // multiple) * multiple)
    up = -(-size // multiple) * multiple
    return down if size - down < up - size else up


def check_input_size(x: torch.Tensor, multiple: int, model_name: str) -> None:
    """Raise a ValueError naming the nearest valid size when H or W is not a multiple of `multiple`.

    Skipped while tracing/compiling: there the shapes are symbolic and the predictor pads anyway.
    """
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects a 4-D batch (B, C, H, W); got shape {tuple(x.shape)}")
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:
        nh, nw = nearest_valid_size(h, multiple), nearest_valid_size(w, multiple)
        raise ValueError(
            f"{model_name} needs height and width that are multiples of {multiple}; got {h}x{w}. "
            f"Nearest valid size: {nh}x{nw} (resize or pad the image; the Predictor pads automatically)."
        )


def check_min_size(x: torch.Tensor, min_size: int, model_name: str) -> None:
    """Raise a ValueError naming the nearest valid size when H or W is below `min_size`.

    For models that take any size from a minimum on (the classifiers: their max-pools need at least
    one pixel left at the deepest stage). Skipped while tracing/compiling, like `check_input_size`.
    """
    if x.dim() != 4:
        raise ValueError(f"{model_name} expects a 4-D batch (B, C, H, W); got shape {tuple(x.shape)}")
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < min_size or w < min_size:
        raise ValueError(
            f"{model_name} needs height and width of at least {min_size}; got {h}x{w}. "
            f"Nearest valid size: {max(h, min_size)}x{max(w, min_size)} (resize or pad the image)."
        )


class ConvBNAct(nn.Sequential):
    """conv -> BatchNorm -> activation; a Sequential so state-dict keys read `<name>.0.weight` etc."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 bias: bool = False, act: type[nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class DoubleConv(nn.Sequential):
    """Two 3x3 same-padded convs, each followed by (optional) BN and ReLU: the U-Net stage."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit a pretrained first-conv weight (O, I, kh, kw) to `in_channels` inputs, as timm does.

    One channel: sum over the input channels (a gray image then gives the same response as an RGB
    image with equal channels). More channels: repeat cyclically and rescale to keep the activation scale.
    """
    cin = weight.shape[1]
    if cin == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // cin)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (cin / in_channels)
