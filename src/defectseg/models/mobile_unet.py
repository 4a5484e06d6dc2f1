"""Mobile-UNet (Jing et al., Textile Research Journal 2020): MobileNetV2 encoder, transposed-conv decoder.

The encoder's state-dict keys are torchvision's `features.<i>...`, so a torchvision (or, after key
mapping, timm) MobileNetV2 ImageNet state dict saved on disk loads into it with `load_encoder_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, check_input_size
from .registry import register_model

# torchvision's MobileNetV2 inverted-residual settings: expansion t, channels c, repeats n, stride s.
MOBILENETV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# Slices of `features` whose outputs are the taps X1..X5 (strides 2, 4, 8, 16, 32).
TAP_SLICES = [(0, 2), (2, 4), (4, 7), (7, 14), (14, 19)]
TAP_CHANNELS = [16, 24, 32, 96, 1280]


class InvertedResidual(nn.Module):
    """MobileNetV2 block with torchvision's layout (`conv.0.0`, `conv.1.0`, `conv.2`, `conv.3`)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2Encoder(nn.Module):
    """torchvision's `mobilenet_v2().features` with a replaceable stem (any in_channels).

    forward: x (B, C, H, W) -> [X1 (16, H/2), X2 (24, H/4), X3 (32, H/8), X4 (96, H/16), X5 (1280, H/32)].
    """

    stem_key = "features.0.0.weight"
    # Keys of a full torchvision classifier checkpoint that are not part of the encoder.
    head_prefixes = ("classifier.",)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(in_channels, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in MOBILENETV2_SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNAct(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for a, b in TAP_SLICES:
            for i in range(a, b):
                x = self.features[i](x)
            taps.append(x)
        return taps


class MobileUNet(nn.Module):
    """MobileNetV2 encoder + decoder of ConvTranspose(k4, s2, p1), add the tap, InvertedResidual(t=6).

    forward: x (B, C, H, W), H and W multiples of 32 -> logits (B, num_classes, H, W).
    At 3x256x256 the decoder outputs are L1 96x16², L2 96x16², L3 32x32², L4 32x32², L5 24x64²,
    L6 24x64², L7 16x128², L8 16x128², then the output N x256².
    """

    size_multiple = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 1) -> None:
        super().__init__()
        self.encoder = MobileNetV2Encoder(in_channels)
        chans = TAP_CHANNELS[::-1]  # 1280, 96, 32, 24, 16
        self.ups = nn.ModuleList(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1) for i in range(4))
        self.blocks = nn.ModuleList(InvertedResidual(c, c, 1, 6) for c in chans[1:])
        self.head = nn.ConvTranspose2d(16, num_classes, 4, 2, 1)

    def decode(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decoder outputs L1..L8 followed by the logits, from the encoder taps X1..X5."""
        outs = []
        x = taps[-1]
        for up, block, skip in zip(self.ups, self.blocks, taps[-2::-1]):
            x = up(x) + skip
            outs.append(x)
            x = block(x)
            outs.append(x)
        outs.append(self.head(x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, getattr(self, "registry_name", "Mobile-UNet"))
        return self.decode(self.encoder(x))[-1]


def timm_to_torchvision_mobilenetv2(state: dict) -> dict:
    """Rename a timm `mobilenetv2_100` state dict to torchvision's `features.<i>` keys.

    timm: conv_stem/bn1, blocks.<stage>.<block>.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}, conv_head/bn2.
    """
    out: dict = {}
    # timm's stage sizes (stage 0 is the t=1 depthwise-separable block): flat index = features index.
    flat = {}
    idx = 1
    for stage, (_, _, n, _) in enumerate(MOBILENETV2_SETTINGS):
        for b in range(n):
            flat[(stage, b)] = idx
            idx += 1
    first = {"conv_dw": "conv.0.0", "bn1": "conv.0.1", "conv_pw": "conv.1", "bn2": "conv.2"}
    rest = {
        "conv_pw": "conv.0.0",
        "bn1": "conv.0.1",
        "conv_dw": "conv.1.0",
        "bn2": "conv.1.1",
        "conv_pwl": "conv.2",
        "bn3": "conv.3",
    }
    top = {
        "conv_stem": "features.0.0",
        "bn1": "features.0.1",
        "conv_head": "features.18.0",
        "bn2": "features.18.1",
        "classifier": "classifier.1",
    }
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, block, layer = int(parts[1]), int(parts[2]), parts[3]
            table = first if stage == 0 else rest
            if layer not in table:
                raise ValueError(f"unexpected timm MobileNetV2 key {key!r}")
            out[f"features.{flat[(stage, block)]}.{table[layer]}.{'.'.join(parts[4:])}"] = value
        elif parts[0] in top:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
        else:
            out[key] = value
    return out


register_model("mobile-unet", MobileUNet)
