"""CheapMix: a CheapNet-family U-Net of constant width G that learns real defect data (S/M/L = G 16/32/64).

Why it differs from the paper's CheapNet (models/cheapnet.py), which keeps the authors' layers exactly:
- Channel mixing. CheapNet is depthwise throughout, so its G channels never exchange information until the
  final 1x1 conv; on real defect data it stays on the all-background plateau. Here every depthwise 3x3 is
  followed by a pointwise 1x1 G->G (a depthwise-separable conv, as in MobileNetV1).
- Residuals. Each encoder stage adds one (option `blocks`) residual depthwise-separable block, so gradients
  reach the stem through identity paths and the extra depth costs little to optimise.
- Linear head. A plain biased 1x1 conv returns the logits (no BatchNorm pinning their mean near 0, no
  LeakyReLU shrinking the negative ones); it is the attribute `head`, so a trainer can set its bias to the
  defect prior log(p / (1 - p)).
- Bilinear upsampling and additive skips instead of depthwise transposed convs on concatenations: the
  width stays G everywhere (no concat), upsampling has no parameters and no MACs, and it is fast on a CPU,
  where grouped transposed convs are slow.

- Optional global context (`context=True`): the bottleneck's mean over all positions, through a biased 1x1
  G->G conv, is added back at every position, so each pixel's decision sees the whole image (the receptive
  field of the convolutions alone is about 120 pixels). Under tiled inference the context is the tile's.

Parameters for in_channels C, N classes, b residual blocks per stage (every conv before a BatchNorm has no bias):
    9*C*G + 2*G  +  4*(1+b)*(G^2 + 13*G)  +  4*(G^2 + 13*G)  +  N*(G + 1)  [+ G^2 + G with context]
i.e. 12*G^2 + 168*G + 1 for C = N = 1, b = 1 (G=16: 5,761; G=32: 17,665; G=64: 59,905).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNAct, check_input_size
from .registry import register_model

# Variants as data: registry name -> width G.
VARIANTS = {"cheapmix-s": 16, "cheapmix-m": 32, "cheapmix-l": 64}

DOWNSAMPLES = 4  # 512 -> 32 at the deepest stage, so inputs must be multiples of 16


def _separable(g: int, stride: int = 1, last_act: bool = True) -> nn.Sequential:
    """depthwise 3x3 (stride) -> BN -> ReLU -> pointwise 1x1 G->G -> BN [-> ReLU]; G^2 + 13*G parameters."""
    return nn.Sequential(
        ConvBNAct(g, g, 3, stride=stride, groups=g), ConvBNAct(g, g, 1, act=nn.ReLU if last_act else None)
    )


class ResidualBlock(nn.Module):
    """relu(x + separable(x)), the separable block without its last ReLU. x (B, G, H, W) -> (B, G, H, W)."""

    def __init__(self, g: int) -> None:
        super().__init__()
        self.body = _separable(g, last_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class CheapMix(nn.Module):
    """Constant-width depthwise-separable U-Net with four stride-2 downsamplings (inputs: multiples of 16).

    Modules: `stem` (3x3 conv C->G, BN, ReLU, full resolution); `stages[i]` (separable stride-2 block, then
    `blocks` residual blocks); `context` (global pooling + 1x1 conv, or None); `decoder[i]` (separable block after
    upsample x2 + skip); `head` (1x1 G->N, bias).
    forward: x (B, in_channels, H, W) -> logits (B, num_classes, H, W).
    """

    size_multiple = 2**DOWNSAMPLES

    def __init__(
        self, in_channels: int = 1, num_classes: int = 1, width: int = 32, blocks: int = 1, context: bool = False
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer (e.g. 16, 32, 64), got {width!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"blocks (residual blocks per encoder stage) must be an integer >= 0, got {blocks!r}")
        if not isinstance(context, bool):
            raise ValueError(f"context (global context at the bottleneck) must be true or false, got {context!r}")
        g = width
        self.width, self.blocks = g, blocks
        # Global context: no BatchNorm here (its input is one value per channel and image).
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(g, g, 1)) if context else None
        self.stem = ConvBNAct(in_channels, g, 3)
        self.stages = nn.ModuleList(
            nn.Sequential(_separable(g, stride=2), *(ResidualBlock(g) for _ in range(blocks)))
            for _ in range(DOWNSAMPLES)
        )
        # decoder[0] works at 1/8 resolution (after the bottleneck is upsampled), decoder[-1] at full resolution.
        self.decoder = nn.ModuleList(_separable(g) for _ in range(DOWNSAMPLES))
        self.head = nn.Conv2d(g, num_classes, 1)

    @property
    def encoder(self) -> nn.ModuleList:
        """The encoder modules, stem and stages (for freezing during transfer learning)."""
        return nn.ModuleList([self.stem, *self.stages])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, getattr(self, "registry_name", "CheapMix"))
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        d = skips.pop()  # the bottleneck, 1/16 resolution
        if self.context is not None:
            d = d + self.context(d)  # (B, G, 1, 1) broadcast over every position
        for block, skip in zip(self.decoder, reversed(skips)):
            # x2 gives the skip's size exactly (inputs are multiples of 16). A constant scale exports as a Resize
            # with constant scales, which ONNX Runtime runs in its blocked (NCHWc) kernels: at 512² the
            # full-resolution upsample took 19 ms with size=skip.shape (a computed size), 8 ms with the scale.
            d = block(F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False) + skip)
        return self.head(d)


register_model("cheapmix", CheapMix, {"width": 32, "blocks": 1})
for _name, _width in VARIANTS.items():
    register_model(_name, CheapMix, {"width": _width, "blocks": 1})
