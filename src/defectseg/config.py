"""Run configuration: one dataclass per concern, YAML in and out, and the papers' recipes as presets.

Resolution order: defaults < preset < --config YAML < command-line options. The resolved config is
written to the run folder and stored inside every checkpoint, so `evaluate` and `predict` need nothing else.
"""
from __future__ import annotations

import difflib
import importlib
import math
import re
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


@dataclass
class DataConfig:
    root: str = ""
    format: str = "auto"
    size: int = 128                      # training resolution: images resized to size x size (or see keep_aspect);
                                         # 128 beat 256 on magnetic tile and tied 192 on NEU-Seg (docs/results.md)
    keep_aspect: bool = False            # tall or wide images (median height/width >= 1.5 or <= 1/1.5): resize to
                                         # their median aspect at about size² pixels, not squashed to a square (off:
                                         # no better on tall magnetic tiles, benchmarks/probes/tall_aspect.py)
    shape: tuple[int, int] | None = None  # (H, W) of resize training and predict; None: size x size, or what
                                         # keep_aspect chooses when training starts (stored in the checkpoint)
    crop: int | None = None              # train on crop x crop windows at native resolution instead of resizing
    defect_crops: float = 0.5            # crop mode: share of a defective image's crops centred on a defect pixel
    defective_share: float | None = 0.25  # least share of each epoch's draws that are defective images (a floor:
                                         # oversamples mostly defect-free sets; null: the split's own share)
    channels: int = 1                    # 1 gray, 3 RGB (the model gets twice as many in reference mode)
    split_file: str | None = None        # reuse a split (e.g. magnetic-tile/split-70-15-15.json)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    augment: str = "light"               # none | light | strong
    mask_rule: str = "auto"              # auto (each format's own) | gt0 | gt127 | ids (data/io.py says which is which)
    cache: bool = True
    skip_bad: bool = False
    allow_unlabeled: bool = False        # generic layout: an image without a mask is defect-free
    defective_only: bool = False         # train on defective images only (the cascade's segmenter)
    defect_free_only: bool = False       # train on defect-free images only (with synthetic_defects: learn from
                                         # good parts); the threshold then comes from val-frr (good val images)
    defective_images: int | None = None  # keep only this many real defective training images (seeded; few-label)
    synthetic_defects: float = 0.0       # probability per good training image of a painted defect (data/defects.py)
    copy_paste: float = 0.0              # probability per good training image of a pasted real defect
    reference: str | None = None         # reference mode: a defect-free image file, or "group"
    workers: int = 0
    mean: float = 0.5                    # normalisation after scaling to [0, 1]: (x - mean) / std
    std: float = 0.25


def resize_hw(data: DataConfig) -> tuple[int, int]:
    """(H, W) that resize training and the Predictor's resize mode bring every image to."""
    return (int(data.shape[0]), int(data.shape[1])) if data.shape else (data.size, data.size)


@dataclass
class ModelConfig:
    name: str = "cheapmix-m"                # learns real data on a CPU (benchmarks/results); paper models by name
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
    prior_init: bool = True              # start a model's `head` bias at the training split's class prior
    amp: bool = True                     # bf16 autocast on CUDA, and on a CPU with native bf16 (engine.cpu_bf16)
    channels_last: bool = True           # NHWC activations: faster on CUDA and for CheapNet on the CPU
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    monitor: str = "pixel_ap"            # validation metric that picks best.pt (higher is better); pixel_ap
                                         # does not depend on the threshold, which is chosen after training
    eval_every: int = 1


@dataclass
class InferConfig:
    threshold: float = 0.5
    # How training sets `threshold` on the validation split for best.pt: "fixed" (keep it), "val-f1" (best
    # pixel F1) or "val-frr" (the most sensitive threshold whose false-reject rate, the share of defect-free
    # validation images called NG, stays within target_frr).
    threshold_from: str = "val-f1"
    target_frr: float = 0.01
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
        if d["data"]["shape"] is not None:
            d["data"]["shape"] = list(d["data"]["shape"])
        return d


PRESETS: dict[str, dict[str, Any]] = {
    # CheapNet paper: BCE, Adam lr 0.01, MultiStepLR at 60 and 90 by 0.1, 120 epochs, 512², no augmentation,
    # no oversampling (the papers' recipes turn off our defaults' floor on defective draws).
    "cheapnet-paper": {
        "data": {"size": 512, "augment": "none", "defective_share": None},
        "train": {"loss": "bce", "optimizer": "adam", "lr": 0.01, "schedule": "multistep",
                  "milestones": [60, 90], "gamma": 0.1, "epochs": 120},
    },
    # Mobile-UNet paper: cross-entropy with median-frequency-balancing weights, 256², Adam.
    "mobile-unet-paper": {
        "data": {"size": 256, "channels": 3, "defective_share": None},
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


# ----------------------------------------------------------------------------- checking
# Every value is checked when the config is built, so a typo in --set or a YAML file fails at once with the key,
# the bad value and what is expected, instead of a traceback deep in training (or after the first epoch).
# Types come from the dataclass annotations; the allowed names come from the registries (imported lazily:
# the engine, losses and data modules import this one).

_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "infer": InferConfig}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # PyYAML reads "1e-3" as a string


# Keys whose values name registered things: key -> (module, attribute). An attribute may be a dict, tuple, list
# or set of names, or a function returning them; they are looked up only when needed.
_REGISTRIES: dict[str, tuple[str, str]] = {
    "data.format": (".data.formats", "FORMATS"),
    "data.augment": (".data.transforms", "PRESETS"),
    "model.name": (".models", "list_models"),
    "train.loss": (".losses", "LOSSES"),
    "train.optimizer": (".engine", "OPTIMIZERS"),
    "train.schedule": (".engine", "SCHEDULES"),
    "train.monitor": (".engine", "MONITORS"),
}
_ENUMS: dict[str, list[str]] = {"train.task": ["segment", "classify"], "infer.score": ["mean", "max"],
                                "infer.threshold_from": ["fixed", "val-f1", "val-frr"],
                                "data.mask_rule": ["auto", "gt0", "gt127", "ids"]}


def _registry_choices() -> dict[str, Any]:
    """Key -> function returning its allowed names (so a registry is imported only when its key is given)."""
    def lookup(key: str) -> list[str]:
        module, attr = _REGISTRIES[key]
        names = getattr(importlib.import_module(module, __package__), attr)
        names = _names(names() if callable(names) else names)
        return ["auto", *names] if key == "data.format" else names

    table: dict[str, Any] = {k: (lambda k=k: lookup(k)) for k in _REGISTRIES}
    table.update({k: (lambda v=v: list(v)) for k, v in _ENUMS.items()})
    return table


def _names(registry: Any) -> list[str]:
    # dicts, tuples and lists keep their (meaningful) order; a set has none, so it is sorted
    return sorted(registry) if isinstance(registry, (set, frozenset)) else list(registry)


def choices(key: str) -> list[str]:
    """Allowed names for a key with a fixed set of values, e.g. choices("train.loss") -> ["bce", ...].

    Keys: data.format, data.augment, model.name, train.loss, train.optimizer, train.schedule, train.monitor,
    train.task, infer.score. The names come from the registries, so CLI help and checks never go stale.
    """
    table = _registry_choices()
    if key not in table:
        raise ValueError(f"no list of choices for {key!r}; keys with choices: {', '.join(table)}")
    return table[key]()


# Other fixed values (not names of registered things): key -> (allowed values, how to say them).
_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "train.class_weights": ((None, "median-frequency"), "null or 'median-frequency'"),
    "data.channels": ((1, 3), "1 (gray) or 3 (RGB)"),
    "infer.connectivity": ((4, 8), "4 or 8"),
}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

# Ranges: key -> (test on a non-None value, what is expected).
_RANGES: dict[str, tuple[Any, str]] = {
    # A plain folder name: "../x" or "/tmp/x" would put the run outside out_dir.
    "name": (lambda v: v.strip() not in ("", ".", "..") and not re.search(r"[/\\]", v),
             "a plain run name without / or \\ (it names the folder inside out_dir; choose the parent with "
             "--out-dir)"),
    "data.size": (lambda v: v >= 1, ">= 1"),
    "data.shape": (lambda v: all(n >= 1 for n in v), "null or [H, W] >= 1 (multiples of the model's size multiple)"),
    "data.crop": (lambda v: v >= 1, "null or >= 1 (a multiple of the model's size multiple)"),
    "data.defect_crops": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.synthetic_defects": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.defective_images": (lambda v: v >= 0, "null or an integer >= 0"),
    "data.copy_paste": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.defective_share": (lambda v: 0 < v < 1, "null or in (0, 1)"),
    "data.workers": (lambda v: v >= 0, ">= 0"),
    "data.std": (lambda v: v > 0, "> 0 (images are divided by it)"),
    "data.fractions": (lambda v: all(f >= 0 for f in v) and abs(sum(v) - 1) <= 1e-6,
                       "three non-negative fractions (train, val, test) summing to 1"),
    "model.num_classes": (lambda v: v >= 1, "null (derived) or >= 1"),
    "model.freeze_encoder_epochs": (lambda v: v >= 0, ">= 0"),
    "train.lr": (lambda v: v > 0, "> 0"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.momentum": (lambda v: v >= 0, ">= 0"),
    "train.milestones": (lambda v: all(m >= 0 for m in v), "epochs >= 0"),
    "train.gamma": (lambda v: v > 0, "> 0"),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.iterations": (lambda v: v >= 1, "null or >= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.grad_clip": (lambda v: v > 0, "null or > 0"),
    "train.eval_every": (lambda v: v >= 1, ">= 1"),
    "infer.threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "infer.target_frr": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "infer.min_area": (lambda v: v >= 0, ">= 0"),
    "infer.tile": (lambda v: v >= 1, "null or >= 1"),
    "infer.tile_overlap": (lambda v: v >= 0, ">= 0"),
}


class _Bad(Exception):
    """A value that does not fit its annotation; the message says what was expected."""


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _expected(tp: Any) -> str:
    if tp is Any:
        return "anything"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_expected(a) for a in inner) + " or null"
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict:
        return "a mapping (key: value)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(tp, _expected(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """value as type tp, converting only where nothing is lost (int -> float, list -> tuple); else _Bad."""
    if tp is Any:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a)
            except _Bad:
                pass
        raise _Bad(_expected(tp))
    if origin is list or origin is tuple:
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            raise _Bad(_expected(tp))
        elem = args if origin is tuple else (args[0],) * len(value)
        try:
            items = [_coerce(v, t) for v, t in zip(value, elem)]
        except _Bad:
            raise _Bad(_expected(tp)) from None
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Bad("a mapping with string keys (key: value)")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # an annotation this checker does not know: accept rather than block a valid config
        return value
    raise _Bad(_expected(tp))


def _hint(value: Any, allowed: list[str]) -> str:
    """' (did you mean ...?)' for a close name, or the one name the value abbreviates ('median')."""
    text, names = str(value), [str(a) for a in allowed]
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if not close and text:
        close = [n for n in names if n.lower().startswith(text.lower())]
    return f" (did you mean {close[0]!r}?)" if len(close) == 1 else ""


def _check_value(key: str, value: Any, registry: dict[str, Any]) -> str | None:
    """Problem with an already-typed value (choices and ranges), or None."""
    if key in registry:
        allowed = registry[key]()
        if value not in allowed:
            return (f"{key}: unknown value {value!r}; choose one of: {', '.join(allowed)}"
                    f"{_hint(value, allowed)}")
    if key in _FIXED:
        allowed_values, say = _FIXED[key]
        if value not in allowed_values:
            return f"{key}: expected {say}, got {_show(value)}{_hint(value, [a for a in allowed_values if a])}"
    if key == "train.device" and not _DEVICE.fullmatch(value):
        return (f"{key}: expected auto, cpu, cuda or cuda:N (N a GPU index >= 0), got {_show(value)}"
                f"{_hint(value, ['auto', 'cpu', 'cuda'])}")
    if key in _RANGES and value is not None:
        test, say = _RANGES[key]
        if not test(value):
            return f"{key}: expected {say}, got {value!r}"
    return None


def _unknown_key(key: str, where: str, known: list[str]) -> str:
    hint = _hint(key, known)
    return f"unknown config key {where + key!r}{hint}; known keys{' in ' + where[:-1] if where else ''}: " \
           f"{', '.join(known)}"


def _check(d: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Merge d over the defaults and check every value: (typed flat sections, one line per problem)."""
    errors: list[str] = []
    defaults = RunConfig().to_dict()
    top_known = list(defaults)
    full: dict[str, Any] = {}
    for key, value in d.items():
        if key not in defaults:
            errors.append(_unknown_key(str(key), "", top_known))
        elif key in _SECTIONS:
            if value is None:  # `train:` with every key commented out
                continue
            if not isinstance(value, Mapping):
                errors.append(f"{key}: expected a mapping of {key} keys (e.g. {key}.{next(iter(defaults[key]))}), "
                              f"got {_show(value)}")
                continue
            section = full.setdefault(key, {})
            for k, v in value.items():
                if k not in defaults[key]:
                    errors.append(_unknown_key(str(k), f"{key}.", list(defaults[key])))
                else:
                    section[k] = v
        else:
            full[key] = value
    registry = _registry_choices()
    typed: dict[str, Any] = {}
    for section, cls in [(None, RunConfig), *_SECTIONS.items()]:
        hints = get_type_hints(cls)
        given = full if section is None else full.get(section, {})
        out: dict[str, Any] = {}
        for f in fields(cls):
            if section is None and f.name in _SECTIONS:
                continue
            key = f.name if section is None else f"{section}.{f.name}"
            if f.name not in given:
                out[f.name] = (defaults if section is None else defaults[section])[f.name]
                out[f.name] = _coerce(out[f.name], hints[f.name])  # defaults are valid: only list -> tuple
                continue
            value = given[f.name]
            try:
                value = _coerce(value, hints[f.name])
            except _Bad as exc:
                errors.append(f"{key}: expected {exc}, got {_show(value)}")
                continue
            problem = _check_value(key, value, registry)
            if problem:
                errors.append(problem)
            out[f.name] = value
        if section is None:
            typed.update(out)
        else:
            typed[section] = out
    return typed, errors


def from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from a (possibly partial) nested dict, checking every value.

    Raises one ValueError listing every problem (one line each): unknown keys, sections that are not
    mappings, values of the wrong type, names not in their registry (with a close match), values out of range.
    Lossless conversions are made: an integer for a float (lr: 1 -> 1.0), a list for a tuple (fractions).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a config must be a mapping of sections (data, model, train, infer), got {_show(d)}")
    typed, errors = _check(d)
    if errors:
        if len(errors) == 1:
            raise ValueError(errors[0])
        raise ValueError(f"{len(errors)} problems in the config:\n" + "\n".join(f"  {e}" for e in errors))
    return RunConfig(name=typed["name"], out_dir=typed["out_dir"],
                     **{s: cls(**typed[s]) for s, cls in _SECTIONS.items()})


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
    for section in _SECTIONS:
        if section in d and d[section] is None:  # `train:` with every key commented out: nothing to set
            del d[section]
        elif section in d and not isinstance(d[section], dict):
            raise ValueError(f"config file {path}: section {section!r} must be a mapping of {section} keys "
                             f"(indented `key: value` lines under `{section}:`), got {_show(d[section])}")
    return d


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "InferConfig", "RunConfig", "PRESETS",
           "resolve", "from_dict", "load_yaml", "save_yaml", "choices"]
