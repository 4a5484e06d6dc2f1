"""Image classifiers for the classify-then-segment cascade: logits (B, num_classes).

With num_classes=1 the single logit is "defective" (sigmoid); the gate calls an image OK below its threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBNAct, check_min_size
from .mobile_unet import MobileNetV2Encoder
from .registry import register_model

# VGG-style classifier: two conv-BN-ReLU per stage, max-pool between stages.
VGG_WIDTHS = (32, 64, 128, 256)


class VGGClassifier(nn.Module):
    """forward: x (B, in_channels, H, W) -> logits (B, num_classes). Any H, W >= 2**(len(widths)-1) (8)."""

    size_multiple = 1

    def __init__(
        self, in_channels: int = 1, num_classes: int = 1, widths: tuple[int, ...] = VGG_WIDTHS, dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [ConvBNAct(cin, w), ConvBNAct(w, w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )
        # Each max-pool halves (floor) the size; below this the last pool has nothing left to pool.
        self.min_size = 2 ** (len(widths) - 1)

    @property
    def encoder(self) -> nn.Module:
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_min_size(x, self.min_size, getattr(self, "registry_name", "VGG classifier"))
        return self.classifier(self.features(x))


class MobileNetV2Classifier(nn.Module):
    """MobileNetV2 (the Mobile-UNet encoder) + global average pool + dropout + linear.

    forward: x (B, in_channels, H, W) -> logits (B, num_classes).
    """

    size_multiple = 1

    def __init__(self, in_channels: int = 1, num_classes: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = MobileNetV2Encoder(in_channels)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(1280, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stride-2 convs with padding take any size >= 1; only the batch layout can be wrong.
        check_min_size(x, 1, getattr(self, "registry_name", "MobileNetV2 classifier"))
        return self.classifier(self.encoder.features(x))


register_model("classifier-vgg", VGGClassifier, task="classify")
register_model("classifier-mobilenetv2", MobileNetV2Classifier, task="classify")
