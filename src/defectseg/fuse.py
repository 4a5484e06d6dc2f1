"""Inference rewrites: the trained model's function in the form fast CPU kernels serve.

`fuse_for_inference(model)` returns an eval-mode copy in which
- every module with a `for_inference()` method is replaced by what it returns: a model family's own rewrite,
  defined beside the model (CheapNet: `models.cheapnet.CheapNetInference`);
- every BatchNorm that follows a convolution in an nn.Sequential is folded into it (`models.layers.fold_batchnorm`),
  so inference skips a full pass over each of those activations (ONNX Runtime folds them itself at load; eager
  PyTorch does not).
The copy is for inference only (its state dict differs); keep the original for training and checkpoints.
"""

from __future__ import annotations

import copy

from torch import nn

from .models.layers import fold_sequential_batchnorms

__all__ = ["fuse_for_inference"]


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with the rewrites above: same input and output, x (B, C, H, W) -> the model's
    output, equal up to float rounding. The model itself is not modified."""
    model = model.for_inference() if hasattr(model, "for_inference") else copy.deepcopy(model)
    model.eval()
    _replace_rewritable(model)
    fold_sequential_batchnorms(model)
    return model


def _replace_rewritable(module: nn.Module) -> None:
    for name, child in module.named_children():
        if hasattr(child, "for_inference"):
            module._modules[name] = child.for_inference().eval()
        else:
            _replace_rewritable(child)
