"""Blocks shared by several model families, and the inference rewrites they share (BatchNorm folding, the
sub-pixel form of a stride-2 transposed convolution)."""

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

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
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


# ----------------------------------------------------------------------------- inference rewrites
@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` (its eval statistics) into `conv` in place: per output channel w' = w·γ/σ, b' = (b − μ)·γ/σ + β.
    conv gets a bias if it had none; `bn` is then the identity to drop."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (Co,)
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        # weight (Ci, Co/groups, kh, kw): output channel q·(Co/groups) + j sits at [group q's inputs, j]
        g, (ci, co_g) = conv.groups, w.shape[:2]
        w.mul_(scale.view(g, 1, co_g, 1, 1).expand(g, ci // g, co_g, 1, 1).reshape(ci, co_g, 1, 1))
    else:
        w.mul_(scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_sequential_batchnorms(module: nn.Module) -> None:
    """In every nn.Sequential inside `module`: fold each conv -> BatchNorm pair and put nn.Identity in the BN's
    place (so state-dict-like positions and the other layers stay where they were). In place; eval use only."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for name, nxt in zip(names, names[1:]):
            conv, bn = seq._modules[name], seq._modules[nxt]
            if (
                isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d))
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_var is not None
            ):
                fold_batchnorm(conv, bn)
                seq._modules[nxt] = nn.Identity()


@torch.no_grad()
def subpixel_weight(t: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A stride-2 transposed convolution as a stride-1 convolution whose outputs are the four phases.

    Output pixel (2m + a, 2n + b) of `t` sums input pixels (m + dy, n + dx) through the taps ky = a + p − 2·dy
    (likewise kx). Returns (weight (4·Co, Ci/groups, 3, 3), bias (4·Co,)) for a 3x3 convolution with padding 1
    and the same groups, whose output channel o·4 + 2a + b is phase (a, b) of output channel o: followed by
    `pixel_shuffle(·, 2)` it equals `t(x)` exactly. Needs stride 2, no dilation, and an output twice the input
    (k + output_padding − 2·padding = 2) with every tap within one input pixel (k <= 4).
    """
    ci, co_g, kh, kw = t.weight.shape
    g = t.groups
    if (
        t.stride != (2, 2)
        or t.dilation != (1, 1)
        or any(k + op - 2 * p != 2 or k > 4 for k, p, op in zip(t.kernel_size, t.padding, t.output_padding))
    ):
        raise ValueError(f"{t} is not a stride-2 transposed convolution with output twice its input and k <= 4")
    co = co_g * g
    v = t.weight.new_zeros(4 * co, ci // g, 3, 3)
    w = t.weight.view(g, ci // g, co_g, kh, kw)
    for a in (0, 1):
        for b in (0, 1):
            for ky in range(kh):
                dy, ry = divmod(a + t.padding[0] - ky, 2)
                for kx in range(kw):
                    dx, rx = divmod(b + t.padding[1] - kx, 2)
                    if not (ry or rx):
                        # output channel q·co_g + j of group q reads inputs [q·Ci/g, (q+1)·Ci/g)
                        v[2 * a + b :: 4, :, 1 + dy, 1 + dx] = w[:, :, :, ky, kx].permute(0, 2, 1).reshape(co, ci // g)
    bias = t.bias if t.bias is not None else t.weight.new_zeros(co)
    return v, bias.repeat_interleave(4)
