"""Config values are checked when the config is built: key, bad value and what is expected, all at once."""

from __future__ import annotations

import pytest
import yaml

from defectseg import config as C


def _set(item: str) -> dict:
    """One --set section.key=value as the CLI parses it (the value read as a YAML scalar)."""
    key, value = item.split("=", 1)
    section, name = key.split(".")
    return {section: {name: yaml.safe_load(value)}}


def _registry(key: str) -> list[str]:
    from defectseg import losses, metrics, models, optim
    from defectseg.data import formats, transforms

    def names(r):
        return sorted(r) if isinstance(r, (set, frozenset)) else list(r)

    return {
        "data.format": ["auto", *formats.FORMATS],
        "data.augment": names(transforms.PRESETS),
        "model.name": models.list_models(),
        "train.loss": names(losses.LOSSES),
        "train.optimizer": names(optim.OPTIMIZERS),
        "train.schedule": names(optim.SCHEDULES),
        "train.monitor": names(metrics.MONITORS),
    }[key]


@pytest.mark.parametrize(
    "item, expected",
    [
        ("train.lr=abc", ["train.lr", "'abc'", "number"]),
        ("data.size=12.5", ["data.size", "12.5", "integer"]),
        ("train.amp=maybe", ["train.amp", "'maybe'", "true or false"]),
        ("data.size=true", ["data.size", "True", "integer"]),
        ("train.epochs=0", ["train.epochs", ">= 1"]),
        ("train.lr=-0.1", ["train.lr", "> 0"]),
        ("train.iterations=0", ["train.iterations", ">= 1"]),
        ("infer.threshold=1.5", ["infer.threshold", "[0, 1]"]),
        ("infer.connectivity=6", ["infer.connectivity", "4 or 8"]),
        ("infer.score=median", ["infer.score", "mean, max"]),
        ("data.channels=2", ["data.channels", "1 (gray) or 3 (RGB)"]),
        ("data.fractions=[0.5, 0.5, 0.1]", ["data.fractions", "summing to 1"]),
        ("data.fractions=[0.5, 0.5]", ["data.fractions", "3 numbers"]),
        ("train.task=detect", ["train.task", "segment, classify"]),
        ("train.class_weights=median", ["train.class_weights", "did you mean 'median-frequency'?"]),
        ("train.device=gpu", ["train.device", "cuda:N"]),
        ("train.device=cuda:-1", ["train.device", "'cuda:-1'"]),
        ("train.grad_clip=0", ["train.grad_clip", "> 0"]),
        ("train.milestones=60", ["train.milestones", "list of integers"]),
        ("model.options=3", ["model.options", "mapping"]),
        ("model.num_classes=0", ["model.num_classes", ">= 1"]),
        ("infer.tile=0", ["infer.tile", ">= 1"]),
    ],
)
def test_bad_value_names_key_value_and_expectation(item, expected):
    with pytest.raises(ValueError) as err:
        C.from_dict(_set(item))
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


@pytest.mark.parametrize(
    "item, key, close",
    [
        ("train.schedule=cosin", "train.schedule", "cosine"),
        ("train.monitor=nope", "train.monitor", None),
        ("train.loss=dicee", "train.loss", "dice"),
        ("train.optimizer=adamm", "train.optimizer", "adam"),
        ("data.format=dagn", "data.format", "dagm"),
        ("data.augment=heavy", "data.augment", None),
        ("model.name=cheapnet-xl", "model.name", None),
    ],
)
def test_unknown_name_lists_the_registry(item, key, close):
    with pytest.raises(ValueError) as err:
        C.from_dict(_set(item))
    msg = str(err.value)
    assert msg.startswith(key) and repr(item.split("=")[1]) in msg
    assert ", ".join(_registry(key)) in msg
    if close:
        assert f"did you mean {close!r}?" in msg


def test_every_problem_is_reported_together():
    with pytest.raises(ValueError) as err:
        C.from_dict(
            {
                "train": {"lr": "abc", "schedule": "cosin", "epochs": 0, "learning_rate": 1},
                "data": {"size": 12.5},
                "infer": 3,
                "nme": "x",
            }
        )
    lines = str(err.value).splitlines()
    assert lines[0] == "7 problems in the config:"
    body = "\n".join(lines[1:])
    for part in (
        "train.lr",
        "train.schedule",
        "train.epochs",
        "'train.learning_rate'",
        "data.size",
        "infer:",
        "did you mean 'name'?",
    ):
        assert part in body, part
    assert len(lines) == 8  # one line per problem


def test_unknown_keys_stay_errors():
    with pytest.raises(ValueError, match="unknown config key 'train.learning_rate'"):
        C.resolve(overrides={"train": {"learning_rate": 1}})
    with pytest.raises(ValueError, match=r"unknown config key 'train.lrr' \(did you mean 'lr'\?\)"):
        C.from_dict({"train": {"lrr": 1}})
    with pytest.raises(ValueError, match="mapping of sections"):
        C.from_dict([1, 2])  # type: ignore[arg-type]


def test_valid_values_are_converted_losslessly():
    cfg = C.from_dict(
        {
            "train": {
                "lr": 1,
                "milestones": (10, 20),
                "device": "cuda:1",
                "grad_clip": 1,
                "weight_decay": "1e-4",
            },  # PyYAML reads 1e-4 as a string
            "data": {"fractions": [1, 0, 0], "size": 64.0},
            "infer": {"tile": None, "threshold": 1},
        }
    )
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.train.weight_decay == 1e-4
    assert cfg.train.milestones == [10, 20] and cfg.train.grad_clip == 1.0
    assert cfg.data.fractions == (1.0, 0.0, 0.0) and isinstance(cfg.data.fractions, tuple)
    assert cfg.data.size == 64 and type(cfg.data.size) is int
    assert cfg.infer.tile is None and cfg.infer.threshold == 1.0
    assert C.from_dict(_set("train.lr=1e-3")).train.lr == 0.001


def test_defaults_and_round_trip():
    assert C.from_dict({}) == C.RunConfig()
    cfg = C.resolve("cheapnet-paper", overrides={"name": "x", "model": {"options": {"width": 8}}})
    assert C.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("preset", list(C.PRESETS))
def test_every_preset_builds(preset, tmp_path):
    cfg = C.resolve(preset)
    C.save_yaml(cfg, tmp_path / "c.yaml")
    assert C.resolve(config_file=tmp_path / "c.yaml") == cfg


def test_yaml_sections_must_be_mappings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: 3\n")
    with pytest.raises(ValueError, match=r"section 'train' must be a mapping.*got 3 \(int\)"):
        C.resolve(config_file=bad)
    bad.write_text("data:\n  size: abc\n")
    with pytest.raises(ValueError, match="data.size: expected an integer, got 'abc'"):
        C.resolve(config_file=bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("train:\n  # lr: 0.1\n")  # an empty section sets nothing, the preset's values stay
    assert C.resolve("cheapnet-paper", config_file=empty).train.epochs == 120


def test_cli_set_fails_before_training(tmp_path):
    from typer.testing import CliRunner

    from defectseg.cli import app

    res = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path), "--out-dir", str(tmp_path), "--quiet", "--set", "train.schedule=cosin"]
    )
    assert res.exit_code != 0
    out = " ".join(res.output.split())  # rich may wrap long lines
    assert "train.schedule" in out and "did you mean 'cosine'?" in out
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize(
    "key",
    ["data.format", "data.augment", "model.name", "train.loss", "train.optimizer", "train.schedule", "train.monitor"],
)
def test_choices_come_from_the_registries(key):
    assert C.choices(key) == _registry(key)


def test_choices():
    from defectseg.losses import LOSSES

    assert sorted(C.choices("train.loss")) == sorted(LOSSES) and len(C.choices("train.loss")) == len(LOSSES)
    assert C.choices("train.task") == ["segment", "classify", "anomaly"]
    with pytest.raises(ValueError, match="no list of choices"):
        C.choices("train.lr")


def test_infer_override_is_checked_by_the_field_rules():
    base = C.InferConfig()
    changed = base.overridden(threshold=0.3, min_area=10, tile=None)  # None keeps the current value
    assert changed.threshold == 0.3 and changed.min_area == 10 and changed.tile is None
    assert base == C.InferConfig()  # the original is unchanged
    assert base.overridden(threshold=1).threshold == 1.0 and type(base.overridden(threshold=1).threshold) is float
    with pytest.raises(ValueError, match=r"threshold=2 is not a probability in \[0, 1\]"):
        base.overridden(threshold=2)
    with pytest.raises(ValueError, match="min_area=-1 is not >= 0"):
        base.overridden(min_area=-1)
    with pytest.raises(ValueError, match="min_area='x' is not an integer"):
        base.overridden(min_area="x")
    with pytest.raises(ValueError, match="unknown config key 'infer.thresh'"):
        base.overridden(thresh=0.5)
    with pytest.raises(ValueError, match="2 problems") as err:
        base.overridden(threshold=-1.0, connectivity=6)
    assert "connectivity=6 is not 4 or 8" in str(err.value)


def test_a_models_recipe_lies_under_presets_files_and_options(tmp_path):
    """`--model unet-lite0` alone trains with its recipe (models/unet_lite.py); anything the user sets wins."""
    from defectseg.models import model_recipe

    recipe = model_recipe("unet-lite0")
    lite = C.resolve(overrides={"model": {"name": "unet-lite0"}})
    assert (lite.data.size, lite.train.optimizer, lite.train.iterations) == (
        recipe["data"]["size"],
        recipe["train"]["optimizer"],
        recipe["train"]["iterations"],
    )
    assert C.resolve(preset="transfer") == lite
    mine = tmp_path / "run.yaml"
    mine.write_text("train:\n  iterations: 50\n")
    assert C.resolve(preset="transfer", config_file=mine).train.iterations == 50
    assert C.resolve(overrides={"model": {"name": "unet-lite0"}, "data": {"size": 256}}).data.size == 256
    assert C.resolve(preset="transfer", sets={"train": {"iterations": None}}).train.iterations is None
    short = C.resolve(preset="transfer", overrides={"train": {"epochs": 3}})  # epochs asked for: not 900 steps
    assert (short.train.epochs, short.train.iterations) == (3, None)
    assert C.resolve() == lite  # the default model, with its recipe
    plain = C.resolve(overrides={"model": {"name": "cheapmix-m"}})  # a model without a recipe: the fields' defaults
    assert plain.train.optimizer == "adam" and plain.data.size == 128 and model_recipe("cheapmix-m") == {}
