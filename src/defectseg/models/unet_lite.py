"""U-Net on the ImageNet-pretrained EfficientNet-Lite0 encoder (`unet-lite0`): transfer learning for the CPU.

The encoder's features after blocks 0, 2, 4, 10 and 15 (strides 2 to 32; `efficientnet_lite.FEATURE_BLOCKS`) feed
a small decoder: at each level the coarser map is upsampled x2 (bilinear), concatenated with the skip and mixed by
one 3x3 conv-BN-ReLU; the last level (stride 1) has no skip; a 1x1 head gives the logits. Decoder widths are data
(`VARIANTS`); `pretrained=False` builds the same network with random weights (the ablation).

The network takes pixel values in [0, 1] (`input_norm`: `PixelModel` only divides by 255); the encoder's stem holds
the weights' input normalisation, (pixel - 127) / 128 (`efficientnet_lite`).

Image head (`image_head=True`, on in the recipe): an OK/NG score from the whole image, as the segmentation-decision
networks on KolektorSDD have: the deepest features (320 channels at stride 32) and the segmentation logits, each
pooled by mean and by max over the image, into one linear layer. The segmentation logits enter detached. The image
loss trains the head and, through `image_grad` (the recipe's 0.1) of its gradient, the encoder: its whole gradient
lifted magnetic tile's image AUROC to 0.98 but cost segmentation (test defect IoU 0.61 against 0.74, three seeds),
none of it left the AUROC at the maximum probability's; a tenth keeps the AUROC (0.979) and most of the
segmentation (IoU 0.675, 0.719 before the cap below removes the masks of images the head calls good;
docs/results.md).
Its logit is one more output channel, constant over the image: logits (B, num_classes + 1, H, W). Training scores
it against the image label (`step.TrainStep`); the Predictor caps the defect probabilities at its probability
(`predictor.probabilities`). The class defaults (no head) are what checkpoints from before the recipe had it
rebuild with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import EfficientNetLite0
from .layers import ConvBNAct, check_input_size
from .registry import register_model

__all__ = ["VARIANTS", "UNetLite0"]

# name -> decoder widths, coarse to fine (levels at strides 16, 8, 4, 2, 1)
VARIANTS: dict[str, tuple[int, ...]] = {"unet-lite0": (96, 64, 48, 32, 16)}

# How unet-lite0 trains (config sections, under anything the user sets; docs/results.md): 192², AdamW with the
# pretrained encoder at a quarter of the decoder's learning rate and frozen (BatchNorm too) in the first epoch, a
# fixed number of steps rather than epochs (12.5 minutes on two cores on magnetic tile), the image head with a
# tenth of its gradient into the encoder. In the recipe, not the class defaults, so a run's config names them.
RECIPE = {
    "data": {"size": 192},
    "model": {"freeze_encoder_epochs": 1, "options": {"image_head": True, "image_grad": 0.1}},
    "train": {
        "optimizer": "adamw",
        "lr": 2e-3,
        "encoder_lr_scale": 0.25,
        "weight_decay": 1e-4,
        "schedule": "cosine",
        "iterations": 900,
    },
}


class UNetLite0(nn.Module):
    """x (B, C, H, W) in [0, 1], H and W multiples of 32 -> logits (B, num_classes, H, W), with the image head
    (B, num_classes + 1, H, W): the last channel is the image logit, the same at every pixel."""

    size_multiple = 32
    input_norm = (0.0, 1.0)  # (mean, std) PixelModel applies after dividing by 255: none, the stem normalises

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        decoder: tuple[int, ...] = VARIANTS["unet-lite0"],
        pretrained: bool = True,
        image_head: bool = False,
        image_grad: float = 1.0,
    ) -> None:
        super().__init__()
        if len(decoder) != 5 or min(decoder) < 1:
            raise ValueError(f"decoder must give 5 positive widths (strides 16 to 1), got {decoder!r}")
        self.encoder = EfficientNetLite0(in_channels)
        # on the meta device (counting parameters) there is nothing to load into
        if pretrained and not next(self.encoder.parameters()).is_meta:
            self.encoder.load_imagenet()
        skips = (*reversed(self.encoder.channels[:-1]), 0)  # 112, 40, 24, 16, then none at full resolution
        widths = (self.encoder.channels[-1], *decoder)
        self.decoder = nn.ModuleList(
            ConvBNAct(cin + skip, cout, 3, act=nn.ReLU) for cin, skip, cout in zip(widths, skips, decoder)
        )
        self.head = nn.Conv2d(decoder[-1], num_classes, 1)
        if not 0.0 <= image_grad <= 1.0:
            raise ValueError(f"image_grad must be in [0, 1] (the share of the image loss's gradient), got {image_grad}")
        self.image_head, self.image_grad = image_head, image_grad
        if image_head:
            self.image = nn.Linear(2 * self.encoder.channels[-1] + 2 * num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, "unet-lite0")
        feats = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, [*reversed(feats[:-1]), None]):
            # a constant scale exports as a Resize with constant scales (see cheapmix: faster in ONNX Runtime)
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = block(y if skip is None else torch.cat([y, skip], 1))
        seg = self.head(y)
        if not self.image_head:
            return seg
        # The deepest features pass a share of the image loss's gradient to the encoder (module docstring): the
        # encoder shaped by the image label is what lifts the image AUROC; all of it costs segmentation.
        deep, flat = feats[-1], seg.detach()
        if self.image_grad < 1.0:  # the forward value unchanged, a share of its gradient to the encoder
            deep = deep * self.image_grad + deep.detach() * (1.0 - self.image_grad)
        pooled = torch.cat([deep.mean((2, 3)), flat.mean((2, 3)), deep.amax((2, 3)), flat.amax((2, 3))], 1)
        image = self.image(pooled)  # (B, 1)
        return torch.cat([seg, image[:, :, None, None].expand(-1, -1, *seg.shape[2:])], 1)


for _name, _widths in VARIANTS.items():
    register_model(_name, UNetLite0, {"decoder": _widths, "pretrained": True}, recipe=RECIPE)
