"""Models: `create_model(name, in_channels=1, num_classes=1, **options)` and `list_models()` (`registry`).

Every segmenter returns logits (B, num_classes, H, W); classifiers return (B, num_classes). Each model
has `size_multiple` (inputs must be multiples of it) and an `encoder` module (frozen in transfer learning).
Registered networks take normalised input; `PixelModel` wraps one with its normalisation, and it is what
training, checkpoints, export and inference use: raw pixel values (0..255) in, logits out.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# The families register their variants when imported; this order is the order `list_models` gives.
# isort: off
from .cheapnet import CheapNet, unwrap_authors_checkpoint
from .cheapmix import CheapMix
from .mobile_unet import MobileUNet, timm_to_torchvision_mobilenetv2
from .unet import EncoderUNet, UNet
from .unet_lite import UNetLite0
from .patchcore import PatchCoreLite0
from .classifier import MobileNetV2Classifier, VGGClassifier

# isort: on
from .layers import adapt_stem_weight
from .registry import (
    create_model,
    has_image_head,
    list_models,
    model_defaults,
    model_recipe,
    model_task,
    register_model,
)


class PixelModel(nn.Module):
    """The model that is trained, saved, exported and served: raw pixel values in, logits out.

    forward(x): x (B, C, H, W) uint8 or float pixel values in 0..255 -> `net((x / 255 - mean) / std)`, the
    logits of the wrapped network. The normalisation is one multiply-add with buffers (`scale`, `shift`), so
    it travels in the state dict and in an exported ONNX graph: no caller normalises by itself.
    """

    def __init__(self, net: nn.Module, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std={std} must be positive (data.std)")
        self.net = net
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std)))
        self.register_buffer("shift", torch.tensor(-mean / std))
        # The registry facts callers read off a model (padding multiple, name, encoder to freeze).
        self.size_multiple = int(getattr(net, "size_multiple", 1))
        self.registry_name = getattr(net, "registry_name", type(net).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() * self.scale + self.shift)


def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file saved with torch.save, loaded safely (weights_only=True)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"weights file {path} does not exist; give the path of a saved state dict") from None
    except Exception as exc:  # pickle errors, truncated zip, foreign objects
        raise ValueError(f"cannot read weights file {path}: {exc}. Save it with torch.save(state_dict, path).") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return unwrap_authors_checkpoint(state)


def load_encoder_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load encoder weights (torchvision key naming, or timm's for MobileNetV2) from a file into `model.encoder`.

    Strict on the encoder: a missing or unexpected key raises a ValueError listing them. The classifier head
    of a full ImageNet checkpoint is ignored. A 3-channel stem is fitted to the model's input channels.
    Returns the keys loaded.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "stem_key"):
        raise ValueError(
            f"model {getattr(model, 'registry_name', type(model).__name__)} has no pretrainable "
            "encoder; use mobile-unet, unet-vgg16, unet-resnet18, unet-mobilenetv1 or classifier-mobilenetv2"
        )
    state = load_checkpoint_state(path)
    if any(k.startswith(("conv_stem.", "blocks.")) for k in state):
        state = timm_to_torchvision_mobilenetv2(state)
    state = {k: v for k, v in state.items() if not k.startswith(encoder.head_prefixes)}
    own = encoder.state_dict()
    # Fewer downsamplings keep only the shallow stages: deeper pretrained keys are expected extras.
    # A full-depth encoder has no such stages, so there every foreign key stays an error.
    truncated = getattr(encoder, "downsamples", 5) < 5
    deeper = {k for k in state if k not in own and truncated and _is_deeper_stage(k, own)}
    state = {k: v for k, v in state.items() if k not in deeper}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the {type(encoder).__name__} encoder: "
            f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
        )
    stem = encoder.stem_key
    state[stem] = adapt_stem_weight(state[stem], own[stem].shape[1])
    bad = [k for k in own if state[k].shape != own[k].shape]
    if bad:
        raise ValueError(
            f"{path}: shape mismatch for {bad[:5]}: file {[tuple(state[k].shape) for k in bad[:5]]} "
            f"vs model {[tuple(own[k].shape) for k in bad[:5]]}"
        )
    encoder.load_state_dict(state, strict=True)
    return sorted(state)


def _is_deeper_stage(key: str, own: dict) -> bool:
    """True when `key` belongs to a layer after the last one the truncated encoder keeps.

    Compares layer indices rather than prefixes so that a key in the middle of the encoder that the
    encoder lacks (e.g. a BatchNorm of vgg16_bn in a plain VGG16) is reported, not silently dropped.
    """
    parts = key.split(".")
    top = parts[0]
    if top.startswith("layer") and top[5:].isdigit():  # ResNet stages layer1..layer4
        kept = [int(k.split(".")[0][5:]) for k in own if k.startswith("layer")]
        return int(top[5:]) > max(kept, default=0)
    if top == "features" and len(parts) > 1 and parts[1].isdigit():
        kept = [int(k.split(".")[1]) for k in own if k.startswith("features.")]
        return int(parts[1]) > max(kept, default=-1)
    return False


__all__ = [
    "PixelModel",
    "create_model",
    "list_models",
    "has_image_head",
    "model_recipe",
    "model_defaults",
    "model_task",
    "register_model",
    "load_encoder_weights",
    "load_checkpoint_state",
    "CheapNet",
    "CheapMix",
    "PatchCoreLite0",
    "MobileUNet",
    "UNet",
    "EncoderUNet",
    "VGGClassifier",
    "MobileNetV2Classifier",
    "UNetLite0",
]
