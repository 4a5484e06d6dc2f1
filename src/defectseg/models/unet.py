"""The U-Net family: classic and small U-Nets, and U-Nets on VGG16, ResNet18 and MobileNetV1 encoders.

Variants are data (`PLAIN_VARIANTS`, `ENCODERS`), not subclasses. Every variant takes any
`in_channels` and a `downsamples` option: fewer downsamplings keep small defects visible deeper in
the network (inputs must then be multiples of 2**downsamples).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, DoubleConv, check_input_size
from .registry import register_model

# Plain U-Nets: registry name -> (stage widths, BatchNorm?). The classic one is Ronneberger's widths
# with same padding and BN (as most reimplementations); the small one is the tutorial's 16..256 net.
PLAIN_VARIANTS = {"unet": ((64, 128, 256, 512, 1024), True), "unet-small": ((16, 32, 64, 128, 256), False)}


class UNet(nn.Module):
    """Plain U-Net: DoubleConv stages, 2x2 max-pool down, 2x2 transposed conv up, concat skip.

    forward: x (B, in_channels, H, W), H and W multiples of 2**downsamples -> logits (B, num_classes, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        widths: tuple[int, ...] = (64, 128, 256, 512, 1024),
        batch_norm: bool = True,
        downsamples: int | None = None,
    ) -> None:
        super().__init__()
        d = len(widths) - 1 if downsamples is None else downsamples
        if not 1 <= d <= len(widths) - 1:
            raise ValueError(f"downsamples must be in 1..{len(widths) - 1}, got {d}")
        widths = tuple(widths[: d + 1])
        self.size_multiple = 2**d
        self.downs = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.downs.append(DoubleConv(cin, w, batch_norm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in range(d))
        self.dec = nn.ModuleList(DoubleConv(2 * widths[i], widths[i], batch_norm) for i in range(d))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def encoder(self) -> nn.ModuleList:
        return self.downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, getattr(self, "registry_name", "U-Net"))
        skips = []
        for i, stage in enumerate(self.downs):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.ups))):
            x = self.dec[i](torch.cat([skips[i], self.ups[i](x)], 1))
        return self.head(x)


# ----------------------------------------------------------------------------- encoders
# Each encoder returns features f[k] at stride 2**k for k = 0..downsamples (f[0] may be None when
# the encoder has no full-resolution stage) and names its state-dict keys as torchvision does.

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Encoder(nn.Module):
    """torchvision `vgg16().features` (no BN); taps before each max-pool: 64@1, 128@2, 256@4, 512@8, 512@16, 512@32."""

    stem_key = "features.0.weight"
    head_prefixes = ("classifier.",)

    def __init__(self, in_channels: int = 3, downsamples: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.tap_after: list[int] = []  # index of the last layer of each stage
        self.channels: list[int] = []
        cin = in_channels
        for v in VGG16_CFG:
            if v == "M":
                self.tap_after.append(len(layers) - 1)
                self.channels.append(cin)
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.channels.append(cin)
        self.tap_after.append(len(layers) - 1)  # after the final pool: stride 32
        self.downsamples = downsamples
        # Keep only the layers needed up to the deepest stage used.
        self.features = nn.Sequential(*layers[: self.tap_after[downsamples] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        feats = []
        taps = set(self.tap_after[: self.downsamples + 1])
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                feats.append(x)
        return feats


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (keys conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class ResNet18Encoder(nn.Module):
    """torchvision `resnet18()` without `fc`; taps: None@1, 64@2 (stem), 64@4, 128@8, 256@16, 512@32."""

    stem_key = "conv1.weight"
    head_prefixes = ("fc.",)

    def __init__(self, in_channels: int = 3, downsamples: int = 5) -> None:
        super().__init__()
        self.downsamples = downsamples
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.channels = [0, 64, 64, 128, 256, 512][: downsamples + 1]
        specs = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, s) in enumerate(specs[: max(0, downsamples - 1)]):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, s), BasicBlock(cout, cout, 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        x = self.relu(self.bn1(self.conv1(x)))
        feats: list[torch.Tensor | None] = [None, x]
        for k in range(2, self.downsamples + 1):
            x = getattr(self, f"layer{k - 1}")(self.maxpool(x) if k == 2 else x)
            feats.append(x)
        return feats


class MobileNetV1Encoder(nn.Module):
    """MobileNetV1 at width 16 (half of the usual 32): stem conv then depthwise-separable blocks.

    Taps: None@1, 32@2, 64@4, 128@8, 256@16, 512@32. No torchvision model exists; keys are `features.<i>`.
    """

    stem_key = "features.0.0.weight"
    head_prefixes = ("classifier.", "fc.")
    # (out channels relative to the width, stride) of each depthwise-separable block.
    BLOCKS = [(2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2)] + [(16, 1)] * 5 + [(32, 2), (32, 1)]

    def __init__(self, in_channels: int = 3, downsamples: int = 5, width: int = 16) -> None:
        super().__init__()
        self.downsamples = downsamples
        layers: list[nn.Module] = [ConvBNAct(in_channels, width, 3, 2)]
        self.tap_after: list[int] = []
        self.channels: list[int] = [0]
        cin, stride = width, 2
        for mult, s in self.BLOCKS:
            if s == 2:
                if stride >= 2**downsamples:
                    break
                self.tap_after.append(len(layers) - 1)
                self.channels.append(cin)
                stride *= 2
            cout = mult * width
            layers.append(nn.Sequential(ConvBNAct(cin, cin, 3, s, groups=cin), ConvBNAct(cin, cout, 1)))
            cin = cout
        self.tap_after.append(len(layers) - 1)
        self.channels.append(cin)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        feats: list[torch.Tensor | None] = [None]
        taps = set(self.tap_after)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in taps:
                feats.append(x)
        return feats


# registry name -> encoder class
ENCODERS = {"unet-vgg16": VGG16Encoder, "unet-resnet18": ResNet18Encoder, "unet-mobilenetv1": MobileNetV1Encoder}


class EncoderUNet(nn.Module):
    """U-Net on a backbone: from the deepest encoder stage, per stage: 2x upsample (transposed conv),
    concat the skip if there is one, DoubleConv.

    forward: x (B, in_channels, H, W), H and W multiples of 2**downsamples -> logits (B, num_classes, H, W).
    """

    def __init__(
        self,
        encoder: str,
        in_channels: int = 1,
        num_classes: int = 1,
        downsamples: int = 5,
        decoder_widths: tuple[int, ...] = (16, 32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if not 1 <= downsamples <= 5:
            raise ValueError(f"downsamples must be in 1..5, got {downsamples}")
        self.size_multiple = 2**downsamples
        self.encoder = ENCODERS[encoder](in_channels, downsamples)
        chans = self.encoder.channels  # channels at stride 2**k, 0 when there is no tap
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = chans[downsamples]
        for k in reversed(range(downsamples)):
            w = decoder_widths[min(k, len(decoder_widths) - 1)]
            self.ups.append(nn.ConvTranspose2d(cin, w, 2, 2))
            self.dec.append(DoubleConv(w + chans[k], w))
            cin = w
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, getattr(self, "registry_name", "encoder U-Net"))
        feats = self.encoder(x)
        y = feats[-1]
        for up, dec, skip in zip(self.ups, self.dec, feats[-2::-1]):
            y = up(y)
            y = dec(y if skip is None else torch.cat([skip, y], 1))
        return self.head(y)


for _name, (_widths, _bn) in PLAIN_VARIANTS.items():
    register_model(_name, UNet, {"widths": _widths, "batch_norm": _bn})
for _name in ENCODERS:
    register_model(_name, EncoderUNet, {"encoder": _name})
