"""CheapNet: an ultra-light U-Net of constant width G (S/M/L = G 2/32/1024).

Matches the authors' code: module names `encoder1..4, bottleneck, decoder1..4, output`, each a
Sequential(conv, BatchNorm, LeakyReLU(0.2)) with biased convs, so their `{"CheapNet": state_dict}`
checkpoints load. Parameters for one output class: 137*G + 3 (depthwise), 99*G^2 + 38*G + 3 (standard).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import check_input_size

# Variants as data: registry name -> width G.
VARIANTS = {"cheapnet-s": 2, "cheapnet-m": 32, "cheapnet-l": 1024}


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True))


class CheapNet(nn.Module):
    """Constant-width depthwise U-Net with four stride-2 downsamplings (inputs: multiples of 16).

    forward: x (B, in_channels, H, W) -> logits (B, num_classes, H, W).
    """

    size_multiple = 16

    def __init__(self, in_channels: int = 1, num_classes: int = 1, width: int = 32,
                 conv: str = "depthwise", head: str = "paper") -> None:
        super().__init__()
        if conv not in ("depthwise", "standard"):
            raise ValueError(f"conv must be 'depthwise' or 'standard', got {conv!r}")
        if head not in ("paper", "linear"):
            raise ValueError(f"head must be 'paper' (conv-BN-LeakyReLU, as the authors) or 'linear', got {head!r}")
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        g = width
        groups = g if conv == "depthwise" else 1
        self.width, self.conv = g, conv
        self.encoder1 = _block(nn.Conv2d(in_channels, g, 3, 1, 1), g)
        self.encoder2 = _block(nn.Conv2d(g, g, 3, 2, 1, groups=groups), g)
        self.encoder3 = _block(nn.Conv2d(g, g, 3, 2, 1, groups=groups), g)
        self.encoder4 = _block(nn.Conv2d(g, g, 3, 2, 1, groups=groups), g)
        self.bottleneck = _block(nn.Conv2d(g, g, 3, 2, 1, groups=groups), g)
        self.decoder1 = _block(nn.ConvTranspose2d(g, g, 3, 2, 1, output_padding=1, groups=groups), g)
        # decoder2..4 see concat([skip, upsampled]) (2G channels); with groups=G each output channel
        # mixes skip channel pairs in that order, which is why the concat order is fixed.
        self.decoder2 = _block(nn.ConvTranspose2d(2 * g, g, 3, 2, 1, output_padding=1, groups=groups), g)
        self.decoder3 = _block(nn.ConvTranspose2d(2 * g, g, 3, 2, 1, output_padding=1, groups=groups), g)
        self.decoder4 = _block(nn.ConvTranspose2d(2 * g, g, 3, 2, 1, output_padding=1, groups=groups), g)
        # The authors end with conv -> BN -> LeakyReLU(0.2): BN pins the mean logit near 0 and the
        # LeakyReLU scales negative logits by 0.2, so confident background (logit << 0) is slow to learn.
        # head="linear" keeps only the 1x1 conv (2 fewer parameters per class); keys stay `output.0.*`.
        out_conv = nn.Conv2d(2 * g, num_classes, 1)
        self.output = _block(out_conv, num_classes) if head == "paper" else nn.Sequential(out_conv)

    @property
    def encoder(self) -> nn.ModuleList:
        """The encoder modules (for freezing during transfer learning)."""
        return nn.ModuleList([self.encoder1, self.encoder2, self.encoder3, self.encoder4, self.bottleneck])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, getattr(self, "registry_name", "CheapNet"))
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        b = self.bottleneck(e4)
        d1 = self.decoder1(b)
        d2 = self.decoder2(torch.cat([e4, d1], 1))
        d3 = self.decoder3(torch.cat([e3, d2], 1))
        d4 = self.decoder4(torch.cat([e2, d3], 1))
        return self.output(torch.cat([e1, d4], 1))


def unwrap_authors_checkpoint(state: dict) -> dict:
    """The authors save `{"CheapNet": state_dict}`; accept that or a bare state dict."""
    if "CheapNet" in state and isinstance(state["CheapNet"], dict):
        return state["CheapNet"]
    return state
