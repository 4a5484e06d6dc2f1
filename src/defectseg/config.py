"""Run configuration: one dataclass per concern, YAML in and out, and the papers' recipes as presets.

Resolution order: defaults < preset < --config YAML < command-line options. The resolved config is
written to the run folder and stored inside every checkpoint, so `evaluate` and `predict` need nothing else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    root: str = ""
    format: str = "auto"
    size: int = 256                      # square training resolution (images resized to size x size)
    channels: int = 1                    # 1 gray, 3 RGB (2 in reference mode: image + reference)
    split_file: str | None = None        # reuse a split (e.g. magnetic-tile/split-70-15-15.json)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    augment: str = "light"               # none | light | strong
    cache: bool = True
    skip_bad: bool = False
    allow_unlabeled: bool = False        # generic layout: an image without a mask is defect-free
    defective_only: bool = False         # train on defective images only (the cascade's segmenter)
    reference: str | None = None         # reference mode: a defect-free image file, or "group"
    workers: int = 0
    mean: float = 0.5                    # normalisation after scaling to [0, 1]: (x - mean) / std
    std: float = 0.25


@dataclass
class ModelConfig:
    name: str = "cheapnet-m"
    options: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None       # None: derived (1 logit for binary unless the loss is "ce")
    encoder_weights: str | None = None   # a local file with torchvision-named encoder weights
    freeze_encoder_epochs: int = 0


@dataclass
class TrainConfig:
    task: str = "segment"                # segment | classify
    loss: str = "bce-dice"               # bce | dice | bce-dice | ce | focal
    loss_options: dict[str, Any] = field(default_factory=dict)
    class_weights: str | None = None     # "median-frequency": CE weights from the training split
    optimizer: str = "adam"              # adam | adamw | sgd
    lr: float = 1e-2
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"             # none | multistep | cosine | onecycle
    milestones: list[int] = field(default_factory=lambda: [60, 90])
    gamma: float = 0.1
    epochs: int = 30
    iterations: int | None = None        # if set, overrides epochs: train this many steps
    batch_size: int = 16
    grad_clip: float | None = None
    amp: bool = True                     # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True           # NHWC activations: faster on CUDA and for CheapNet on the CPU
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    monitor: str = "miou"                # validation metric that picks best.pt (higher is better)
    eval_every: int = 1


@dataclass
class InferConfig:
    threshold: float = 0.5
    min_area: int = 4
    connectivity: int = 8
    score: str = "mean"                  # mean | max probability inside a defect
    tile: int | None = None              # tile images larger than this (pixels per side)
    tile_overlap: int = 32


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"]["fractions"] = list(d["data"]["fractions"])
        return d


PRESETS: dict[str, dict[str, Any]] = {
    # CheapNet paper: BCE, Adam lr 0.01, MultiStepLR at 60 and 90 by 0.1, 120 epochs, 512², no augmentation.
    "cheapnet-paper": {
        "data": {"size": 512, "augment": "none"},
        "train": {"loss": "bce", "optimizer": "adam", "lr": 0.01, "schedule": "multistep",
                  "milestones": [60, 90], "gamma": 0.1, "epochs": 120},
    },
    # Mobile-UNet paper: cross-entropy with median-frequency-balancing weights, 256², Adam.
    "mobile-unet-paper": {
        "data": {"size": 256, "channels": 3},
        "model": {"name": "mobile-unet"},
        "train": {"loss": "ce", "class_weights": "median-frequency", "optimizer": "adam", "lr": 1e-3,
                  "schedule": "none", "epochs": 100},
    },
    # Cascade segmenter: trained on defective images only with BCE+Dice 0.8/0.2, encoder frozen for the
    # first 5 epochs. Its gate is a classifier trained on all images with `--task classify`.
    "cascade": {
        "data": {"defective_only": True},
        "model": {"freeze_encoder_epochs": 5},
        "train": {"loss": "bce-dice", "loss_options": {"bce_weight": 0.8, "dice_weight": 0.2}},
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if key not in base:
            raise ValueError(f"unknown config key {where}{key!r}; known keys: {', '.join(base)}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key not in ("options", "loss_options"):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a (possibly partial) nested dict; unknown keys are a ValueError."""
    full = _merge(RunConfig().to_dict(), d, "")
    data = dict(full["data"])
    data["fractions"] = tuple(data["fractions"])
    return RunConfig(name=full["name"], out_dir=full["out_dir"], data=DataConfig(**data),
                     model=ModelConfig(**full["model"]), train=TrainConfig(**full["train"]),
                     infer=InferConfig(**full["infer"]))


def resolve(preset: str | None = None, config_file: str | Path | None = None,
            overrides: dict[str, Any] | None = None) -> RunConfig:
    """defaults < preset < YAML file < overrides (nested dicts; None values are ignored)."""
    d: dict[str, Any] = {}
    layers: list[dict[str, Any]] = []
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        layers.append(PRESETS[preset])
    if config_file:
        layers.append(load_yaml(config_file))
    if overrides:
        layers.append(_drop_none(overrides))
    for layer in layers:
        d = _deep_update(d, layer)
    return from_dict(d)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) and k not in ("options", "loss_options") else v
            for k, v in d.items() if v is not None}


def _deep_update(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        d = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections (data, model, train, infer)")
    return d


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "InferConfig", "RunConfig", "PRESETS",
           "resolve", "from_dict", "load_yaml", "save_yaml"]
