"""The model registry: each family registers its variants beside its definition (`register_model`), as timm does,
so there is no second list to keep in step. `create_model(name, ...)` builds one; `list_models()` names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "create_model",
    "has_image_head",
    "list_models",
    "model_defaults",
    "model_recipe",
    "model_task",
    "register_model",
]

# segment: trained on masks, logits (B, K, H, W); classify: logits (B, K); anomaly: fitted on good images without a
# gradient step (`anomaly.py`), then run as a segmenter, logits (B, 1, H, W).
TASKS = ("segment", "classify", "anomaly")
# name -> (builder, default options, task). Variants are rows, not subclasses.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any], str]] = {}
# name -> the training settings the model was measured with (config sections; see `model_recipe`)
_RECIPES: dict[str, dict[str, Any]] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    defaults: dict[str, Any] | None = None,
    task: str = "segment",
    recipe: dict[str, Any] | None = None,
) -> None:
    """Register `builder(in_channels=, num_classes=, **options)` as `name`, with these default options; task is one
    of `TASKS`. recipe: config sections (data, model, train,
    infer) the model trains best with, applied under any preset, file or option when it is chosen."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice; pick another name")
    if task not in TASKS:
        raise ValueError(f"task {task!r} of model {name!r} must be one of {', '.join(TASKS)}")
    _REGISTRY[name] = (builder, dict(defaults or {}), task)
    _RECIPES[name] = dict(recipe or {})


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one task ('segment' or 'classify')."""
    return [n for n, (_, _, t) in _REGISTRY.items() if task is None or t == task]


def model_task(name: str) -> str:
    """'segment' or 'classify'."""
    _check_name(name)
    return _REGISTRY[name][2]


def model_recipe(name: str) -> dict[str, Any]:
    """The training settings `name` was measured with, as config sections ({} for the models that train with the
    config's own defaults)."""
    _check_name(name)
    return _RECIPES[name]


def model_defaults(name: str) -> dict[str, Any]:
    """The options `create_model(name)` builds with when none are given."""
    _check_name(name)
    return dict(_REGISTRY[name][1])


def has_image_head(name: str, options: dict[str, Any] | None = None) -> bool:
    """Whether the model `create_model(name, **options)` builds outputs an image logit as its last channel (the
    `image_head` option, e.g. unet-lite0's)."""
    return bool({**model_defaults(name), **(options or {})}.get("image_head", False))


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def create_model(name: str, in_channels: int = 1, num_classes: int = 1, **options: Any) -> nn.Module:
    """Build a registered model. Options override the variant's defaults (e.g. width=8, downsamples=3)."""
    _check_name(name)
    builder, defaults, _ = _REGISTRY[name]
    kwargs = {**defaults, **options}
    try:
        model = builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad option for model {name!r}: {exc}") from exc
    model.registry_name = name
    return model
