"""CheapNet: an ultra-light U-Net of constant width G (S/M/L = G 2/32/1024).

Matches the authors' code: module names `encoder1..4, bottleneck, decoder1..4, output`, each a
Sequential(conv, BatchNorm, LeakyReLU(0.2)) with biased convs, so their `{"CheapNet": state_dict}`
checkpoints load. Parameters for one output class: 137*G + 3 (depthwise), 99*G^2 + 38*G + 3 (standard).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_input_size, fold_sequential_batchnorms, subpixel_weight
from .registry import register_model

# Variants as data: registry name -> width G.
VARIANTS = {"cheapnet-s": 2, "cheapnet-m": 32, "cheapnet-l": 1024}


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True))


class CheapNet(nn.Module):
    """Constant-width depthwise U-Net with four stride-2 downsamplings (inputs: multiples of 16).

    forward: x (B, in_channels, H, W) -> logits (B, num_classes, H, W).
    """

    size_multiple = 16

    def __init__(
        self, in_channels: int = 1, num_classes: int = 1, width: int = 32, conv: str = "depthwise", head: str = "paper"
    ) -> None:
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

    def for_inference(self) -> CheapNetInference:
        """The same function in the form fast CPU kernels serve (`fuse.fuse_for_inference` calls this)."""
        return CheapNetInference(self)


class CheapNetInference(nn.Module):
    """CheapNet's function, rebuilt for inference (eval mode; equal up to float rounding, tested).

    The costly part of CheapNet on a CPU is full resolution: `decoder4` (a grouped transposed conv that no fast
    kernel serves) writes G channels at H x W, the concat with `encoder1` doubles them, and the 1x1 `output` conv
    reads all 2G back. Here:
    - BatchNorm is folded into every conv;
    - `decoder4` is its sub-pixel form (`layers.subpixel_weight`): a stride-1 grouped conv on the half-resolution
      concat giving the four output phases as channels, with its LeakyReLU (element-wise, so it commutes with
      the phase interleave). The first row and column of its 3x3 kernel are zero for k=3, p=1, so it is a 2x2
      conv on the input padded by one on the bottom and right;
    - the 1x1 output conv is split over the concat: its decoder half runs per phase at half resolution (4G -> 4N
      channels), is interleaved by `pixel_shuffle` (N channels only), and is added to its encoder1 half (G -> N at
      full resolution). The G-channel full-resolution decoder output and the 2G concat are never built.
    Decoders 1-3 stay transposed convs: at 1/16 to 1/4 of the pixels they cost little, and the sub-pixel form
    measured slower there in ONNX Runtime (its pixel interleave is a slow 6-D transpose; docs/benchmarks.md).

    forward: x (B, in_channels, H, W) -> logits (B, num_classes, H, W), H and W multiples of 16.
    """

    size_multiple = CheapNet.size_multiple

    def __init__(self, net: CheapNet) -> None:
        super().__init__()
        net = copy.deepcopy(net).eval()
        fold_sequential_batchnorms(net)
        self.registry_name = getattr(net, "registry_name", "CheapNet")
        self.encoder1, self.encoder2, self.encoder3 = net.encoder1, net.encoder2, net.encoder3
        self.encoder4, self.bottleneck = net.encoder4, net.bottleneck
        self.decoder1, self.decoder2, self.decoder3 = net.decoder1, net.decoder2, net.decoder3
        t, self.act4 = net.decoder4[0], net.decoder4[2]
        weight, bias = subpixel_weight(t)
        assert not weight[:, :, 0].any() and not weight[:, :, :, 0].any(), "k=3, p=1 uses offsets 0 and +1 only"
        self.phases = nn.Conv2d(t.in_channels, 4 * t.out_channels, 2, groups=t.groups)
        out, g = net.output[0], net.width
        n = out.out_channels
        self.head_act = net.output[2] if len(net.output) > 2 else nn.Identity()
        self.head_skip = nn.Conv2d(g, n, 1)  # the encoder1 half of the output conv, with the output bias
        self.head_phases = nn.Conv2d(4 * g, 4 * n, 1, bias=False)  # the decoder4 half, per phase
        with torch.no_grad():
            self.phases.weight.copy_(weight[:, :, 1:, 1:])
            self.phases.bias.copy_(bias)
            self.head_skip.weight.copy_(out.weight[:, :g])
            self.head_skip.bias.copy_(out.bias)
            w = torch.zeros_like(self.head_phases.weight)
            for p in range(4):  # output channel k·4 + p (pixel_shuffle's order) reads phase p of every channel
                w[p::4, p::4] = out.weight[:, g:]
            self.head_phases.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, self.registry_name)
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d1 = self.decoder1(self.bottleneck(e4))
        d2 = self.decoder2(torch.cat([e4, d1], 1))
        d3 = self.decoder3(torch.cat([e3, d2], 1))
        y = self.act4(self.phases(F.pad(torch.cat([e2, d3], 1), (0, 1, 0, 1))))  # (B, 4G, H/2, W/2)
        z = F.pixel_shuffle(self.head_phases(y), 2)  # (B, N, H, W)
        return self.head_act(self.head_skip(e1) + z)


def unwrap_authors_checkpoint(state: dict) -> dict:
    """The authors save `{"CheapNet": state_dict}`; accept that or a bare state dict."""
    if "CheapNet" in state and isinstance(state["CheapNet"], dict):
        return state["CheapNet"]
    return state


register_model("cheapnet", CheapNet, {"width": 32, "conv": "depthwise"})
for _name, _width in VARIANTS.items():
    register_model(_name, CheapNet, {"width": _width, "conv": "depthwise"})
