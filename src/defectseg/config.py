"""Run configuration: one dataclass per concern, YAML in and out, and the papers' recipes as presets.

Resolution order: defaults < preset < --config YAML < command-line options. The resolved config is
written to the run folder and stored inside every checkpoint, so `evaluate` and `predict` need nothing else.

Every value is checked when the config is built, so a typo in --set or a YAML file fails at once with the key,
the bad value and what is expected, instead of a traceback deep in training (or after the first epoch). Types
come from the annotations; each field's other limits are declared beside it with `setting(...)`.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

# The registries are read through their modules at check time: register_loss and register_format rebind
# LOSSES and FORMATS, so a name imported here once would miss what is registered later.
from . import losses, metrics, optim
from .data import formats, splits, transforms
from .models import list_models, model_recipe
from .runtime import check_device_name


@dataclass(frozen=True)
class Rule:
    """What a field's values may be beyond their type (one of ok, among, names, check). `ok` is not asked about
    None, whose type says whether null is allowed."""

    say: str = ""  # what is expected, in words ("> 0", "4 or 8")
    ok: Callable[[Any], bool] | None = None  # a range: True for a good value
    among: tuple[Any, ...] = ()  # a few fixed values (None among them where null is)
    names: Callable[[], Iterable[str]] | None = None  # the names a registry holds now
    check: Callable[[Any], str | None] | None = None  # a test that says itself what is wrong

    def problem(self, value: Any) -> tuple[str, str | None] | None:
        """None for a good (typed) value; else (what from_dict says after the key, what the value is not: None
        where the check words its own message)."""
        if self.names:
            allowed = list(self.names())
            if value not in allowed:
                hint = _hint(value, allowed)
                return (
                    f"unknown value {value!r}; choose one of: {', '.join(allowed)}{hint}",
                    f"one of {', '.join(allowed)}{hint}",
                )
        elif self.among:
            if value not in self.among:
                hint = _hint(value, [a for a in self.among if a])
                return f"expected {self.say}, got {_show(value)}{hint}", self.say + hint
        elif self.check:
            message = self.check(value)
            if message:
                return message, None
        elif self.ok and value is not None and not self.ok(value):
            return f"expected {self.say}, got {value!r}", self.say
        return None


def setting(
    default: Any,
    *,
    say: str = "",
    ok: Callable[[Any], bool] | None = None,
    among: Iterable[Any] = (),
    names: tuple[str, ...] | Callable[[], Iterable[str]] | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """A dataclass field with its rule (see Rule) in its metadata; a list or dict default is copied per instance."""
    rule = Rule(say, ok, tuple(among), names if names is None or callable(names) else (lambda: names), check)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


@dataclass
class DataConfig:
    root: str = ""
    format: str = setting("auto", names=lambda: ("auto", *formats.FORMATS))
    # training resolution: images resized to size x size (or see keep_aspect);
    # 128 beat 256 on magnetic tile and tied 192 on NEU-Seg (docs/results.md)
    size: int = setting(128, ok=lambda v: v >= 1, say=">= 1")
    keep_aspect: bool = False  # tall or wide images (median height/width >= 1.5 or <= 1/1.5): resize to
    # their median aspect at about size² pixels, not squashed to a square (off:
    # no better on tall magnetic tiles, benchmarks/probes/tall_aspect.py)
    # (H, W) of resize training and predict; None: size x size, or what keep_aspect chooses when training starts
    # (stored in the checkpoint)
    shape: tuple[int, int] | None = setting(
        None, ok=lambda v: all(n >= 1 for n in v), say="null or [H, W] >= 1 (multiples of the model's size multiple)"
    )
    # train on crop x crop windows at native resolution instead of resizing
    crop: int | None = setting(None, ok=lambda v: v >= 1, say="null or >= 1 (a multiple of the model's size multiple)")
    # crop mode: share of a defective image's crops centred on a defect pixel
    defect_crops: float = setting(0.5, ok=lambda v: 0 <= v <= 1, say="in [0, 1]")
    # least share of each epoch's draws that are defective images (a floor: oversamples mostly defect-free sets;
    # null: the split's own share)
    defective_share: float | None = setting(0.25, ok=lambda v: 0 < v < 1, say="null or in (0, 1)")
    # 1 gray, 3 RGB (the model gets twice as many in reference mode)
    channels: int = setting(1, among=(1, 3), say="1 (gray) or 3 (RGB)")
    split_file: str | None = None  # reuse a split (e.g. magnetic-tile/split-70-15-15.json)
    fractions: tuple[float, float, float] = setting(
        (0.7, 0.15, 0.15), ok=splits.valid_fractions, say=splits.FRACTIONS_RULE
    )
    # keep each part's images in one split (a part: a generic layout's sub-folder, Kolektor's kosNN); false deals
    # every image alone, the sub-folders then balanced across splits like defect types
    keep_parts: bool = True
    augment: str = setting("light", names=lambda: transforms.PRESETS)  # none | light | strong
    # auto (each format's own) | gt0 | gt127 | ids (data/io.py says which is which)
    mask_rule: str = setting("auto", names=("auto", "gt0", "gt127", "ids"))
    cache: bool = True
    skip_bad: bool = False
    allow_unlabeled: bool = False  # generic layout: an image without a mask is defect-free
    defective_only: bool = False  # train on defective images only (the cascade's segmenter)
    defect_free_only: bool = False  # train on defect-free images only (with synthetic_defects: learn from
    # good parts); the threshold then comes from val-frr (good val images)
    # keep only this many real defective training images (seeded; few-label)
    defective_images: int | None = setting(None, ok=lambda v: v >= 0, say="null or an integer >= 0")
    # probability per good training image of a painted defect (data/defects.py)
    synthetic_defects: float = setting(0.0, ok=lambda v: 0 <= v <= 1, say="in [0, 1]")
    # probability per good training image of a pasted real defect
    copy_paste: float = setting(0.0, ok=lambda v: 0 <= v <= 1, say="in [0, 1]")
    reference: str | None = None  # reference mode: a defect-free image file, or "group"
    workers: int = setting(0, ok=lambda v: v >= 0, say=">= 0")
    mean: float = 0.5  # normalisation after scaling to [0, 1]: (x - mean) / std
    std: float = setting(0.25, ok=lambda v: v > 0, say="> 0 (images are divided by it)")


def resize_hw(data: DataConfig) -> tuple[int, int]:
    """(H, W) that resize training and the Predictor's resize mode bring every image to."""
    return (int(data.shape[0]), int(data.shape[1])) if data.shape else (data.size, data.size)


@dataclass
class ModelConfig:
    # unet-lite0 (ImageNet-pretrained encoder, with its recipe) learned every real set here best (12.5 minutes of
    # two cores on magnetic tile; docs/results.md); the other fields' defaults are how the models without a recipe
    # were measured
    name: str = setting("unet-lite0", names=list_models)
    options: dict[str, Any] = field(default_factory=dict)
    # None: derived (1 logit for binary unless the loss is "ce")
    num_classes: int | None = setting(None, ok=lambda v: v >= 1, say="null (derived) or >= 1")
    encoder_weights: str | None = None  # a local file with torchvision-named encoder weights
    freeze_encoder_epochs: int = setting(0, ok=lambda v: v >= 0, say=">= 0")


@dataclass
class TrainConfig:
    task: str = setting("segment", names=("segment", "classify", "anomaly"))
    loss: str = setting("bce-dice", names=lambda: losses.LOSSES)  # bce | dice | bce-dice | ce | focal
    loss_options: dict[str, Any] = field(default_factory=dict)
    # "median-frequency": CE weights from the training split
    class_weights: str | None = setting(None, among=(None, "median-frequency"), say="null or 'median-frequency'")
    optimizer: str = setting("adam", names=lambda: optim.OPTIMIZERS)  # adam | adamw | sgd
    lr: float = setting(1e-2, ok=lambda v: v > 0, say="> 0")
    # the learning rate of a model's `encoder` (a pretrained one) as a fraction of lr; 1: the same
    encoder_lr_scale: float = setting(1.0, ok=lambda v: 0 < v <= 1, say="in (0, 1]")
    weight_decay: float = setting(0.0, ok=lambda v: v >= 0, say=">= 0")
    momentum: float = setting(0.9, ok=lambda v: v >= 0, say=">= 0")
    schedule: str = setting("cosine", names=lambda: optim.SCHEDULES)  # none | multistep | cosine | onecycle
    milestones: list[int] = setting([60, 90], ok=lambda v: all(m >= 0 for m in v), say="epochs >= 0")  # noqa: RUF009
    gamma: float = setting(0.1, ok=lambda v: v > 0, say="> 0")
    epochs: int = setting(30, ok=lambda v: v >= 1, say=">= 1")
    # if set, overrides epochs: train this many steps
    iterations: int | None = setting(None, ok=lambda v: v >= 1, say="null or >= 1")
    batch_size: int = setting(16, ok=lambda v: v >= 1, say=">= 1")
    grad_clip: float | None = setting(None, ok=lambda v: v > 0, say="null or > 0")
    prior_init: bool = True  # start a model's `head` bias at the training split's class prior
    amp: bool = True  # bf16 autocast on CUDA, and on a CPU with native bf16 (runtime.cpu_bf16)
    channels_last: bool = True  # NHWC activations: faster on CUDA and for CheapNet on the CPU
    seed: int = 0
    device: str = setting("auto", check=check_device_name)  # auto | cpu | cuda | cuda:N
    # validation metric that picks best.pt (higher is better); pixel_ap does not depend on the threshold, which is
    # chosen after training
    monitor: str = setting("pixel_ap", names=lambda: metrics.MONITORS)
    eval_every: int = setting(1, ok=lambda v: v >= 1, say=">= 1")


@dataclass
class InferConfig:
    threshold: float = setting(0.5, ok=lambda v: 0 <= v <= 1, say="a probability in [0, 1]")
    # How training sets `threshold` on the validation split for best.pt: "fixed" (keep it), "val-f1" (best
    # pixel F1) or "val-frr" (the most sensitive threshold whose false-reject rate, the share of defect-free
    # validation images called NG, stays within target_frr).
    threshold_from: str = setting("val-f1", names=("fixed", "val-f1", "val-frr"))
    target_frr: float = setting(0.01, ok=lambda v: 0 <= v < 1, say="in [0, 1)")
    min_area: int = setting(4, ok=lambda v: v >= 0, say=">= 0")
    connectivity: int = setting(8, among=(4, 8), say="4 or 8")
    score: str = setting("mean", names=("mean", "max"))  # mean | max probability inside a defect
    tile: int | None = setting(None, ok=lambda v: v >= 1, say="null or >= 1")  # tile larger images (pixels per side)
    tile_overlap: int = setting(32, ok=lambda v: v >= 0, say=">= 0")

    def overridden(self, **values: Any) -> InferConfig:
        """A copy with some settings changed, checked by the same rules as from_dict (None: keep the current
        value). Raises one ValueError for every bad name or value, e.g. `threshold=2.0 is not a probability in
        [0, 1]`; predict, evaluate and serve pass their post-processing options through here."""
        known = {f.name: f for f in fields(self)}
        hints = get_type_hints(InferConfig)
        changes: dict[str, Any] = {}
        errors: list[str] = []
        for name, value in values.items():
            if value is None:
                continue
            if name not in known:
                errors.append(_unknown_key(name, "infer.", list(known)))
                continue
            changes[name], problem = _vet(known[name], hints[name], value)
            if problem:
                detail, say = problem
                errors.append(f"{name}={value!r} is not {say}" if say else f"{name}: {detail}")
        _raise(errors)
        return replace(self, **changes)


@dataclass
class RunConfig:
    # A plain folder name: "../x" or "/tmp/x" would put the run outside out_dir.
    name: str = setting(
        "run",
        ok=lambda v: v.strip() not in ("", ".", "..") and not re.search(r"[/\\]", v),
        say="a plain run name without / or \\ (it names the folder inside out_dir; choose the parent with --out-dir)",
    )
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


# The model a task trains when none is named (the others: ModelConfig.name).
TASK_MODELS = {"anomaly": "patchcore-lite0"}

PRESETS: dict[str, dict[str, Any]] = {
    # CheapNet paper: BCE, Adam lr 0.01, MultiStepLR at 60 and 90 by 0.1, 120 epochs, 512², no augmentation,
    # no oversampling (the papers' recipes turn off our defaults' floor on defective draws).
    "cheapnet-paper": {
        "data": {"size": 512, "augment": "none", "defective_share": None},
        "train": {
            "loss": "bce",
            "optimizer": "adam",
            "lr": 0.01,
            "schedule": "multistep",
            "milestones": [60, 90],
            "gamma": 0.1,
            "epochs": 120,
        },
    },
    # Mobile-UNet paper: cross-entropy with median-frequency-balancing weights, 256², Adam.
    "mobile-unet-paper": {
        "data": {"size": 256, "channels": 3, "defective_share": None},
        "model": {"name": "mobile-unet"},
        "train": {
            "loss": "ce",
            "class_weights": "median-frequency",
            "optimizer": "adam",
            "lr": 1e-3,
            "schedule": "none",
            "epochs": 100,
        },
    },
    # Transfer learning: unet-lite0, EfficientNet-Lite0 pretrained on ImageNet, with its recipe (models/unet_lite.py)
    "transfer": {"model": {"name": "unet-lite0"}},
    # Cascade segmenter: trained on defective images only with BCE+Dice 0.8/0.2, encoder frozen for the
    # first 5 epochs. Its gate is a classifier trained on all images with `--task classify`.
    "cascade": {
        "data": {"defective_only": True},
        "model": {"freeze_encoder_epochs": 5},
        "train": {"loss": "bce-dice", "loss_options": {"bce_weight": 0.8, "dice_weight": 0.2}},
    },
}


# ----------------------------------------------------------------------------- checking

_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "infer": InferConfig}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")  # PyYAML reads "1e-3" as a string


def choices(key: str) -> list[str]:
    """Allowed names for a key with a fixed set of values, e.g. choices("train.loss") -> ["bce", ...].

    Keys: data.format, data.augment, data.mask_rule, model.name, train.task, train.loss, train.optimizer,
    train.schedule, train.monitor, infer.threshold_from, infer.score. The names come from the registries, so CLI
    help and checks never go stale.
    """
    table = {
        f"{section}.{f.name}": f.metadata["rule"].names
        for section, cls in _SECTIONS.items()
        for f in fields(cls)
        if "rule" in f.metadata and f.metadata["rule"].names
    }
    if key not in table:
        raise ValueError(f"no list of choices for {key!r}; keys with choices: {', '.join(table)}")
    return list(table[key]())


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


def _vet(f: Field[Any], tp: Any, value: Any) -> tuple[Any, tuple[str, str | None] | None]:
    """(value typed as tp, None), or (value, problem as Rule.problem gives it) when its type or its rule fails."""
    try:
        value = _coerce(value, tp)
    except _Bad as exc:
        return value, (f"expected {exc}, got {_show(value)}", str(exc))
    rule: Rule | None = f.metadata.get("rule")
    return value, rule.problem(value) if rule else None


def _hint(value: Any, allowed: list[str]) -> str:
    """' (did you mean ...?)' for a close name, or the one name the value abbreviates ('median')."""
    text, names = str(value), [str(a) for a in allowed]
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    if not close and text:
        close = [n for n in names if n.lower().startswith(text.lower())]
    return f" (did you mean {close[0]!r}?)" if len(close) == 1 else ""


def _unknown_key(key: str, where: str, known: list[str]) -> str:
    hint = _hint(key, known)
    return (
        f"unknown config key {where + key!r}{hint}; known keys{' in ' + where[:-1] if where else ''}: "
        f"{', '.join(known)}"
    )


def _raise(errors: list[str]) -> None:
    """One ValueError for every problem found (one line each), if any."""
    if len(errors) == 1:
        raise ValueError(errors[0])
    if errors:
        raise ValueError(f"{len(errors)} problems in the config:\n" + "\n".join(f"  {e}" for e in errors))


def _check(d: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Merge d over the defaults and check every value: (typed flat sections, one line per problem)."""
    errors: list[str] = []
    defaults = RunConfig().to_dict()
    full: dict[str, Any] = {}
    for key, value in d.items():
        if key not in defaults:
            errors.append(_unknown_key(str(key), "", list(defaults)))
        elif key in _SECTIONS:
            if value is None:  # `train:` with every key commented out
                continue
            if not isinstance(value, Mapping):
                errors.append(
                    f"{key}: expected a mapping of {key} keys (e.g. {key}.{next(iter(defaults[key]))}), "
                    f"got {_show(value)}"
                )
                continue
            section = full.setdefault(key, {})
            for k, v in value.items():
                if k not in defaults[key]:
                    errors.append(_unknown_key(str(k), f"{key}.", list(defaults[key])))
                else:
                    section[k] = v
        else:
            full[key] = value
    typed: dict[str, Any] = {}
    for section, cls in [(None, RunConfig), *_SECTIONS.items()]:
        hints = get_type_hints(cls)
        given = full if section is None else full.get(section, {})
        out: dict[str, Any] = {}
        for f in fields(cls):
            if section is None and f.name in _SECTIONS:
                continue
            if f.name not in given:  # defaults are valid: only list -> tuple
                out[f.name] = _coerce((defaults if section is None else defaults[section])[f.name], hints[f.name])
                continue
            out[f.name], problem = _vet(f, hints[f.name], given[f.name])
            if problem:
                errors.append(f"{f.name if section is None else f'{section}.{f.name}'}: {problem[0]}")
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
    _raise(errors)
    return RunConfig(
        name=typed["name"], out_dir=typed["out_dir"], **{s: cls(**typed[s]) for s, cls in _SECTIONS.items()}
    )


def resolve(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: dict[str, Any] | None = None,
) -> RunConfig:
    """defaults < the model's recipe < preset < YAML file < overrides (nested dicts; None values are ignored) < sets
    (`--set`: a null there is meant). The recipe is what the chosen model was measured with (`models.model_recipe`:
    unet-lite0's learning rates, size and length), so `--model unet-lite0` alone trains it as it should be."""
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
    if sets:
        layers.append(sets)
    for layer in layers:
        d = _deep_update(d, layer)
    model = d.get("model") if isinstance(d.get("model"), Mapping) else {}
    train = d.get("train") if isinstance(d.get("train"), Mapping) else {}
    if "name" not in model and train.get("task") in TASK_MODELS:  # --task anomaly alone: its model
        d = _deep_update(d, {"model": {"name": TASK_MODELS[train["task"]]}})
        model = d["model"]
    name = model.get("name", ModelConfig.name)
    recipe = copy.deepcopy(model_recipe(name) if name in list_models() else {})  # from_dict reports a bad name
    if "epochs" in train and "iterations" not in train:  # a length in epochs asked for: not the recipe's in steps
        recipe.get("train", {}).pop("iterations", None)
    return from_dict(_deep_update(recipe, d))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_none(v) if isinstance(v, dict) and k not in ("options", "loss_options") else v
        for k, v in d.items()
        if v is not None
    }


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
            raise ValueError(
                f"config file {path}: section {section!r} must be a mapping of {section} keys "
                f"(indented `key: value` lines under `{section}:`), got {_show(d[section])}"
            )
    return d


def save_yaml(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "InferConfig",
    "RunConfig",
    "PRESETS",
    "resolve",
    "from_dict",
    "load_yaml",
    "save_yaml",
    "choices",
]
