"""Trainer, run folder, CLI train/evaluate, exact resume, DDP on 2 CPU processes, NaN handling, presets."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from defectseg import checkpoint, data, evaluate, models, rundata, runtime, trainer
from defectseg import config as C
from defectseg.cli import app
from defectseg.data.synthetic import write_dagm


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dagm")
    return write_dagm(root, n_per_class=10, size=32, defective_fraction=0.5, seed=1, classes=2)


def _cfg(data: Path, out: Path, name: str, **train) -> C.RunConfig:
    return C.resolve(
        overrides={
            "name": name,
            "out_dir": str(out),
            "data": {"root": str(data), "size": 32, "augment": "light"},
            "model": {"name": "cheapnet-s", "options": {"head": "linear"}},
            "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "device": "cpu", **train},
        }
    )


def test_cli_train_then_evaluate(tiny_data, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_data),
            "--model",
            "cheapnet-s",
            "--size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--out-dir",
            str(tmp_path),
            "--name",
            "r",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    run = tmp_path / "r"
    for f in ("config.yaml", "split.json", "metrics.csv", "best.pt", "last.pt", "curves.png", "report.md"):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert "val_defect_iou" in rows[0]
    split = json.loads((run / "split.json").read_text())
    # DAGM's own Train/Test are respected: every test key comes from a Test folder.
    assert split["test"] and all("/Test/" in k for k in split["test"])
    assert "| defect_iou |" in (run / "report.md").read_text()
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "best.pt"), "--device", "cpu", "--json", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    for k in ("defect_iou", "miou", "image_auroc", "region_ap50"):
        assert k in m
    assert 0.0 <= m["miou"] <= 1.0
    # The split evaluated is the run's test split: as many images as split.json lists.
    assert m["pixel_acc"] >= 0


def test_existing_run_folder_is_not_clobbered(tiny_data, tmp_path):
    trainer.train(_cfg(tiny_data, tmp_path, "twice", epochs=1), quiet=True)
    with pytest.raises(ValueError, match="already holds a run"):
        trainer.train(_cfg(tiny_data, tmp_path, "twice", epochs=1), quiet=True)
    trainer.train(_cfg(tiny_data, tmp_path, "twice", epochs=1), quiet=True, overwrite=True)
    rows = list(csv.DictReader(open(tmp_path / "twice" / "metrics.csv")))
    assert len(rows) == 1


def test_cli_reports_bad_input(tmp_path):
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nope"), "--quiet"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--preset", "paper-x"])
    assert res.exit_code == 2 and "unknown preset" in res.output


def test_metrics_csv_keeps_validation_columns_when_not_every_epoch_is_evaluated(tiny_data, tmp_path):
    trainer.train(_cfg(tiny_data, tmp_path, "ev", epochs=3, eval_every=2), quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "ev" / "metrics.csv")))
    assert [bool(r["val_defect_iou"]) for r in rows] == [False, True, True]  # epoch 2, and the last


def test_resume_is_exact(tiny_data, tmp_path):
    straight = trainer.train(_cfg(tiny_data, tmp_path, "straight"), quiet=True)
    trainer.train(_cfg(tiny_data, tmp_path, "stopped"), quiet=True, stop_after_epoch=0)
    first = checkpoint.load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert first["epoch"] == 0
    resumed = trainer.train(C.RunConfig(), resume=tmp_path / "stopped" / "last.pt", quiet=True)
    assert resumed.epochs == straight.epochs == 3
    a = checkpoint.load_checkpoint(straight.last)
    b = checkpoint.load_checkpoint(resumed.last)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    rows = list(csv.DictReader(open(tmp_path / "stopped" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # and the weights really changed during training
    assert not torch.equal(first["model"]["net.encoder1.0.weight"], b["model"]["net.encoder1.0.weight"])


def test_resume_continues_in_the_checkpoints_folder_from_any_directory(tiny_data, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    cfg = _cfg(tiny_data, tmp_path, "rel", epochs=2)
    cfg.out_dir = "runs"  # relative to a/
    trainer.train(cfg, quiet=True, stop_after_epoch=0)
    monkeypatch.chdir(tmp_path / "b")
    trainer.train(C.RunConfig(), resume=tmp_path / "a" / "runs" / "rel" / "last.pt", quiet=True)
    assert checkpoint.load_checkpoint(tmp_path / "a" / "runs" / "rel" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "b" / "runs").exists()


def test_cpu_autocast_to_bf16_only_where_it_pays(monkeypatch):
    conv, x, cpu = torch.nn.Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8), torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, "cpu_bf16", lambda native=native: native)
        with runtime.autocast(cpu, torch.bfloat16):
            assert conv(x).dtype == expected
    with runtime.autocast(cpu, torch.float16):  # fp16 autocast is CUDA's only
        assert conv(x).dtype == torch.float32


def test_nan_loss_stops_and_keeps_last_good(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer.build_loss

    class Poisoned(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, target):
            calls["n"] += 1
            loss = self.inner(logits, target)
            return loss * float("nan") if calls["n"] > 3 else loss  # epoch 1 has 3 steps (10 images, batch 4)

    monkeypatch.setattr(trainer, "build_loss", lambda *a, **k: Poisoned(real(*a, **k)))
    with pytest.raises(trainer.TrainingError, match="loss became nan.*epoch 2"):
        trainer.train(_cfg(tiny_data, tmp_path, "nan"), quiet=True)
    last = checkpoint.load_checkpoint(tmp_path / "nan" / "last.pt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        checkpoint.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a defectseg checkpoint"):
        checkpoint.load_checkpoint(foreign)
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_write_is_atomic(tmp_path):
    p = checkpoint.save_checkpoint(tmp_path / "x.pt", {"a": 1})
    assert checkpoint.load_checkpoint(p)["a"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["x.pt"]


def test_presets_resolve():
    p = C.resolve("cheapnet-paper")
    assert (p.train.loss, p.train.optimizer, p.train.lr, p.train.schedule) == ("bce", "adam", 0.01, "multistep")
    assert (p.train.milestones, p.train.gamma, p.train.epochs) == ([60, 90], 0.1, 120)
    assert (p.data.size, p.data.augment) == (512, "none")
    m = C.resolve("mobile-unet-paper")
    assert (m.model.name, m.train.loss, m.train.class_weights, m.data.size) == (
        "mobile-unet",
        "ce",
        "median-frequency",
        256,
    )
    c = C.resolve("cascade")
    assert c.data.defective_only and c.model.freeze_encoder_epochs == 5
    assert c.train.loss == "bce-dice" and c.train.loss_options == {"bce_weight": 0.8, "dice_weight": 0.2}
    # precedence: preset < YAML < overrides
    o = C.resolve("cheapnet-paper", overrides={"train": {"lr": 0.001, "epochs": None}})
    assert o.train.lr == 0.001 and o.train.epochs == 120
    with pytest.raises(ValueError, match="unknown preset"):
        C.resolve("nope")
    with pytest.raises(ValueError, match="unknown config key"):
        C.resolve(overrides={"train": {"learning_rate": 1}})


def test_yaml_config_round_trip(tmp_path):
    cfg = C.resolve("cheapnet-paper", overrides={"name": "y"})
    C.save_yaml(cfg, tmp_path / "c.yaml")
    again = C.resolve(config_file=tmp_path / "c.yaml")
    assert again.to_dict() == cfg.to_dict()
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        C.resolve(config_file=tmp_path / "bad.yaml")


def test_paper_preset_with_median_frequency_ce(tiny_data, tmp_path):
    cfg = C.resolve(
        "mobile-unet-paper",
        overrides={
            "name": "mu",
            "out_dir": str(tmp_path),
            "data": {"root": str(tiny_data), "size": 32, "channels": 1},
            "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
        },
    )
    res = trainer.train(cfg, quiet=True)
    ck = checkpoint.load_checkpoint(res.best)
    assert ck["num_classes"] == 2  # CE on binary data: two softmax logits
    assert "defect_iou" in res.test_metrics


def test_classifier_task_and_frozen_encoder(tiny_data, tmp_path):
    cfg = C.resolve(
        overrides={
            "name": "gate",
            "out_dir": str(tmp_path),
            "data": {"root": str(tiny_data), "size": 32},
            "model": {"name": "classifier-vgg", "options": {"widths": [4, 8]}, "freeze_encoder_epochs": 1},
            "train": {"task": "classify", "epochs": 2, "batch_size": 4, "device": "cpu"},
        }
    )
    res = trainer.train(cfg, quiet=True)
    assert "image_auroc" in res.test_metrics and "defect_iou" not in res.test_metrics
    assert "best epoch (by validation image_auroc)" in (tmp_path / "gate" / "report.md").read_text()
    with pytest.raises(ValueError, match="classify model"):
        trainer.train(
            C.resolve(
                overrides={
                    "data": {"root": str(tiny_data)},
                    "model": {"name": "classifier-vgg"},
                    "out_dir": str(tmp_path),
                }
            )
        )


def test_frozen_encoder_does_not_move(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, "frz", epochs=1)
    cfg.model.freeze_encoder_epochs = 1
    trained = checkpoint.load_checkpoint(trainer.train(cfg, quiet=True).last)["model"]
    torch.manual_seed(cfg.train.seed)  # the trainer builds the model right after seeding with this seed
    initial = models.create_model("cheapnet-s", num_classes=1, head="linear").state_dict()
    assert torch.equal(trained["net.encoder2.0.weight"], initial["encoder2.0.weight"])
    assert not torch.equal(trained["net.decoder4.0.weight"], initial["decoder4.0.weight"])
    # BatchNorm of a frozen encoder stays in eval mode: its running statistics do not move either.
    for k in ("encoder1.1.running_mean", "encoder3.1.running_var", "bottleneck.1.running_mean"):
        assert torch.equal(trained[f"net.{k}"], initial[k]), k
    assert not torch.equal(trained["net.decoder4.1.running_mean"], initial["decoder4.1.running_mean"])


def test_reference_mode_trains_two_channel_model(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, "ref", epochs=1)
    cfg.data.reference = "group"
    res = trainer.train(cfg, quiet=True)
    ck = checkpoint.load_checkpoint(res.best)
    assert ck["model"]["net.encoder1.0.weight"].shape[1] == 2
    model, _ = checkpoint.model_from_checkpoint(ck)
    assert model(torch.zeros(1, 2, 32, 32)).shape == (1, 1, 32, 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        trainer.train(C.from_dict(cfg_dict), quiet=True)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, "ddp", epochs=2)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict()), nprocs=2, join=True)
    run = tmp_path / "ddp"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # only rank 0 wrote
    # Validation metrics were reduced across the two ranks: they equal a single-process evaluation
    # of the same weights over the whole validation split.
    single = evaluate.evaluate_checkpoint(run / "last.pt", split_name="val", device="cpu")
    for k in ("miou", "image_auroc", "pixel_acc"):
        assert float(rows[-1][f"val_{k}"]) == pytest.approx(single[k], abs=1e-6), k


def test_cli_generic_layout_with_unlabeled_images(tmp_path):
    import numpy as np

    from defectseg.data.io import write_png

    root = tmp_path / "generic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        img = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        write_png(root / "images" / f"p{i}.png", img)
        if i % 2 == 0:  # odd images have no mask: defect-free only if the user says so
            mask = np.zeros((32, 32), np.uint8)
            mask[8:16, 8:16] = 255
            write_png(root / "masks" / f"p{i}.png", mask)
    args = [
        "train",
        "--data",
        str(root),
        "--model",
        "cheapnet-s",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out-dir",
        str(tmp_path / "runs"),
        "--device",
        "cpu",
        "--quiet",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "allow-unlabeled" in res.output
    res = CliRunner().invoke(app, args + ["--allow-unlabeled"])
    assert res.exit_code == 0, res.output


def test_evaluate_reports_what_predict_delivers(tmp_path):
    """evaluate's pixel and image figures are those of the masks and verdicts predict returns for the same
    images: native sizes that differ from the training size, min_area filtering, one threshold rule."""
    import numpy as np

    from defectseg.data import load_dataset, read_mask
    from defectseg.data.io import write_png
    from defectseg.metrics import ConfusionMatrix
    from defectseg.predictor import Predictor

    root = tmp_path / "generic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(40, 56), (72, 48), (33, 90), (64, 64), (50, 37), (81, 60)]):
        img = rng.integers(90, 160, (h, w), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if i % 2 == 0:
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            mask[y : y + 10, x : x + 12] = 255
            img[mask > 0] = 30
        write_png(root / "images" / f"p{i}.png", img)
        write_png(root / "masks" / f"p{i}.png", mask)
    cfg = C.resolve(
        overrides={
            "name": "agree",
            "out_dir": str(tmp_path),
            "data": {"root": str(root), "size": 32},
            "model": {"name": "cheapnet-s", "options": {"head": "linear"}},
            "train": {"epochs": 2, "batch_size": 2, "lr": 0.05, "device": "cpu"},
        }
    )
    best = trainer.train(cfg, quiet=True).best
    # A threshold inside the range of the model's probabilities, so masks are neither empty nor full.
    samples = load_dataset(root).samples
    images = [read_image_gray(s.image) for s in samples]
    probs = np.concatenate(
        [r.prob.ravel() for r in Predictor.from_checkpoint(best, device="cpu").predict_arrays(images)]
    )
    ck = checkpoint.load_checkpoint(best)
    ck["config"]["infer"].update(threshold=float(np.quantile(probs, 0.9)), min_area=5)
    checkpoint.save_checkpoint(best, ck)

    reported = evaluate.evaluate_checkpoint(best, split_name="all", device="cpu")
    results = Predictor.from_checkpoint(best, device="cpu").predict_arrays(images)
    cm, truth = ConfusionMatrix(2), []
    for s, r in zip(samples, results):
        gt = (read_mask(s.mask, s.mask_rule) > 0).astype(np.int64)
        cm.update(torch.from_numpy(r.mask.astype(np.int64))[None], torch.from_numpy(gt)[None])
        truth.append(bool(gt.any()))
    delivered = cm.compute()
    assert 0 < delivered["matrix"][0][1] + delivered["matrix"][1][1]  # some defect pixels were predicted
    assert reported["defect_iou"] == pytest.approx(delivered["defect_iou"], abs=1e-12)
    assert reported["pixel_acc"] == pytest.approx(delivered["pixel_acc"], abs=1e-12)
    verdicts = [r.verdict == "NG" for r in results]
    assert reported["image_acc"] == pytest.approx(np.mean([v == t for v, t in zip(verdicts, truth)]))


def read_image_gray(path):
    from defectseg.data import read_image

    return read_image(path, 1)


def test_random_crops_are_reproducible_padded_and_find_defects():
    import numpy as np

    from defectseg.data import Sample
    from defectseg.data.dataset import RandomCrops, SegmentationDataset

    class Arrays(SegmentationDataset):  # in-memory images: no files needed
        def __init__(self, pairs):
            super().__init__([Sample(Path(f"{i}.png"), None) for i in range(len(pairs))])
            self._cache = dict(enumerate(pairs))

    big = np.zeros((100, 120), np.uint8), np.zeros((100, 120), np.uint8)
    big[1][90:93, 5:8] = 1  # a 3x3 defect in a corner
    small = np.full((20, 24), 7, np.uint8), np.zeros((20, 24), np.uint8)
    ds = Arrays([big, small])
    crops = RandomCrops(ds, [0] * 50 + [1], crop=32, defect_crops=1.0, seed=4)
    items = [crops[k] for k in range(len(crops))]
    assert all(it["image"].shape == (1, 32, 32) and it["mask"].shape == (32, 32) for it in items)
    assert all(int((it["mask"] == 1).sum()) == 9 for it in items[:50])  # defect-centred: the whole defect in view
    assert torch.equal(RandomCrops(ds, [0] * 50 + [1], 32, 1.0, seed=4)[7]["mask"], items[7]["mask"])
    pad = items[50]["mask"]
    assert (pad[:20, :24] == 0).all() and (pad[20:] == 255).all() and (pad[:, 24:] == 255).all()
    assert (items[50]["image"] == 7).all()  # mirror padding repeats the image, not zeros
    uniform = [RandomCrops(ds, [0] * 50, 32, 0.0, seed=s)[0]["mask"].sum().item() for s in range(50)]
    assert sum(u > 0 for u in uniform) < 10  # uniform windows rarely see the small defect


def test_epoch_order_oversamples_defective_images():
    defective = [True] * 2 + [False] * 18
    order = rundata.epoch_order(20, defective, 0.5, torch.Generator().manual_seed(0))
    assert len(order) == 20 and sum(defective[i] for i in order) == 10
    assert sorted(rundata.epoch_order(20, defective, None, torch.Generator().manual_seed(0))) == list(range(20))
    mostly = [True] * 15 + [False] * 5  # already above the floor: a plain permutation, nothing dropped
    assert sorted(rundata.epoch_order(20, mostly, 0.5, torch.Generator().manual_seed(0))) == list(range(20))


def test_epoch_order_draws_a_tiny_set_several_times():
    defective = [True] * 2 + [False] * 4
    order = rundata.epoch_order(6, defective, 0.5, torch.Generator().manual_seed(0), draws=30)
    assert len(order) == 30 and sum(defective[i] for i in order) == 15 and set(order) == set(range(6))
    plain = rundata.epoch_order(6, None, None, torch.Generator().manual_seed(0), draws=14)
    assert len(plain) == 14 and sorted(plain[:12]) == sorted(list(range(6)) * 2)  # whole passes first
    same = rundata.epoch_order(6, None, None, torch.Generator().manual_seed(0))
    assert same == torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist()


def test_step_counted_run_on_a_tiny_set_validates_per_group_of_steps(tiny_data, tmp_path, monkeypatch):
    # 2 steps per pass over the training images; 12 steps in at most 4 epochs: each epoch is 3 steps (48 draws)
    monkeypatch.setattr(trainer, "STEP_EPOCHS", 4)
    cfg = _cfg(tiny_data, tmp_path, "steps", epochs=1, iterations=12, batch_size=16)
    res = trainer.train(cfg, quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "steps" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and all(r["val_defect_iou"] for r in rows)
    assert checkpoint.load_checkpoint(res.last)["step"] == 12


def test_crop_training_evaluates_at_native_resolution(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, "crop", epochs=1)
    cfg.data.crop, cfg.data.defective_share = 16, 0.5
    res = trainer.train(cfg, quiet=True)
    ck = checkpoint.load_checkpoint(res.best)
    assert ck["config"]["infer"]["tile"] == trainer.NATIVE_TILE and cfg.infer.tile is None
    assert 0.0 <= res.test_metrics["defect_iou"] <= 1.0
    with pytest.raises(ValueError, match="multiple of 16"):
        bad = _cfg(tiny_data, tmp_path, "crop2", epochs=1)
        bad.data.crop = 24
        trainer.train(bad, quiet=True)


def test_threshold_chosen_on_validation_is_stored_and_used(tiny_data, tmp_path):
    import yaml

    from defectseg.predictor import Predictor

    cfg = _cfg(tiny_data, tmp_path, "frr", epochs=2)
    cfg.infer.threshold_from, cfg.infer.target_frr = "val-frr", 0.0
    res = trainer.train(cfg, quiet=True)
    ck = checkpoint.load_checkpoint(res.best)
    thr = ck["config"]["infer"]["threshold"]
    assert yaml.safe_load((res.run_dir / "config.yaml").read_text())["infer"]["threshold"] == thr
    assert "(val-frr: 0 of " in (res.run_dir / "report.md").read_text()
    # No defect-free validation image is called NG at that threshold (target 0), and the threshold is tight:
    # a little lower, at least one is.
    model, mcfg = checkpoint.model_from_checkpoint(ck)
    spec = data.load_dataset(mcfg.data.root)
    keys = json.loads((res.run_dir / "split.json").read_text())["val"]
    val = evaluate.eval_set(mcfg, spec, data.select(spec, keys), [], False)
    free = [val.dataset.arrays(i)[0] for i in range(len(val)) if not val.dataset.arrays(i)[1].any()]
    assert free
    ng = lambda t: sum(
        r.verdict == "NG" for r in Predictor.from_checkpoint(res.best, device="cpu", threshold=t).predict_arrays(free)
    )
    assert ng(thr) == 0
    if thr > 1e-3:
        assert ng(thr - 2e-4) >= 1
    f1 = _cfg(tiny_data, tmp_path, "f1", epochs=1)
    f1.infer.threshold_from = "val-f1"
    assert 0.0 <= checkpoint.load_checkpoint(trainer.train(f1, quiet=True).best)["config"]["infer"]["threshold"] <= 1.0


def test_f1_threshold_keeps_the_fixed_one_for_a_model_that_has_not_learned():
    from defectseg.metrics import PixelRanking

    learned = PixelRanking(bins=10)
    learned.pos[8], learned.neg[2] = 20, 980  # every defect pixel above every background one
    assert evaluate.f1_threshold(learned, 0.5) == (0.3, "best validation pixel F1 1.000")  # lowest tied threshold
    blind = PixelRanking(bins=10)
    blind.pos[:], blind.neg[:] = 2, 98  # the same distribution for both: the best "F1" calls every pixel a defect
    thr, how = evaluate.f1_threshold(blind, 0.5)
    assert thr == 0.5 and how.startswith("kept 0.5: the model has not learned") and "0.039" in how  # 40 / 1020
    # A little skill is not enough: the best F1 must clear a tenth of the way from the trivial F1 to 1.
    weak = PixelRanking(bins=10)
    weak.pos[5:], weak.neg[5:], weak.neg[:5] = 4, 98, 98  # threshold 0.5: F1 = 40 / (40 + 490) = 0.075 < 0.135
    assert evaluate.f1_threshold(weak, 0.4)[0] == 0.4
    weak.neg[5:] = 10  # now F1 = 40 / 90 = 0.44 at threshold 0.5
    assert evaluate.f1_threshold(weak, 0.4) == (0.5, "best validation pixel F1 0.444")
    empty = PixelRanking(bins=10)
    empty.neg[3] = 5
    assert evaluate.f1_threshold(empty, 0.5)[0] == 0.5


def test_aspect_shape_keeps_tall_and_wide_images_at_their_aspect():
    assert rundata.aspect_shape([(1250, 500)] * 3, 256) == (416, 160)  # KolektorSDD-like: 2.5 times as tall
    assert rundata.aspect_shape([(500, 1250)], 256) == (160, 416)
    assert rundata.aspect_shape([(200, 200), (300, 250)], 256) is None  # about square: size x size
    # a set mixing tall and wide images (as magnetic tile does) has a square median aspect
    assert rundata.aspect_shape([(600, 250), (250, 600), (300, 290)], 256) is None


def test_keep_aspect_trains_and_predicts_tall_images_at_their_aspect(tmp_path):
    import cv2
    import numpy as np

    from defectseg.export import export_checkpoint
    from defectseg.predictor import Predictor

    root = write_dagm(tmp_path / "tall", n_per_class=8, size=96, defective_fraction=0.5, seed=2, classes=1)
    for p in root.rglob("*.PNG"):  # 96 x 96 -> 96 tall x 32 wide
        cv2.imwrite(str(p), np.ascontiguousarray(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:, 32:64]))
    cfg = _cfg(root, tmp_path, "tall", epochs=1)
    cfg.data.keep_aspect = True
    res = trainer.train(cfg, quiet=True)
    # aspect 3 at about 32² pixels, sides rounded to 32; in the folder's config and the checkpoint
    assert C.load_yaml(tmp_path / "tall" / "config.yaml")["data"]["shape"] == [64, 32]
    assert checkpoint.load_checkpoint(res.best)["config"]["data"]["shape"] == [64, 32]
    pred = Predictor.from_checkpoint(res.best, device="cpu", backend="torch")
    assert pred.segmenter.input_hw == (64, 32)
    image = cv2.imread(str(next(root.rglob("*.PNG"))), cv2.IMREAD_GRAYSCALE)
    assert pred.predict(image).mask.shape == (96, 32)
    assert export_checkpoint(res.best, tmp_path / "tall.onnx", dynamic=False).ok  # static graph at (64, 32)
    static = Predictor.from_checkpoint(tmp_path / "tall.onnx", device="cpu")
    assert static.segmenter.fixed_hw == (64, 32) and static.predict(image).mask.shape == (96, 32)
    square = _cfg(root, tmp_path, "square", epochs=1)  # the default: squashed to size x size
    trainer.train(square, quiet=True)
    assert C.load_yaml(tmp_path / "square" / "config.yaml")["data"]["shape"] is None
