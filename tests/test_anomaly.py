"""`train --task anomaly`: patchcore-lite0 fitted on good images (coreset, calibration, threshold), then run by
evaluate, predict and export like any segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectseg import checkpoint
from defectseg import config as C
from defectseg.anomaly import fit
from defectseg.bench import count_macs
from defectseg.cli import app
from defectseg.data.synthetic import write_dagm
from defectseg.models import create_model
from defectseg.models.patchcore import BANK_CAP, greedy_coreset
from defectseg.trainer import train


def test_greedy_coreset_covers_every_cluster_and_the_outlier():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(300, 2, generator=gen) for c in centers] + [torch.tensor([[40.0, 40.0]])])
    picks = greedy_coreset(points, 4, seed=1, project=0)
    chosen = points[picks]
    assert 3 * 300 in picks.tolist()  # the lone outlier: a random sample of 4 would almost never hold it
    nearest = torch.cdist(centers, chosen).amin(1)
    assert (nearest < 1.0).all()  # and one pick in each cluster
    assert len(set(greedy_coreset(points, 50, seed=1).tolist())) == 50  # projected: still distinct picks
    assert greedy_coreset(points, 10_000).tolist() == list(range(len(points)))  # asked for more: all of them


def test_bank_cap_and_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="over the cap"):
        create_model("patchcore-lite0", bank_size=BANK_CAP, pretrained=False)
    with pytest.raises(ValueError, match="layers"):
        create_model("patchcore-lite0", layers=(4, 16), pretrained=False)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("patchcore-lite0", num_classes=3, pretrained=False)


def test_macs_count_the_distances_to_the_bank():
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("patchcore-lite0", bank_size=300, pretrained=False).eval()
    model.set_bank(torch.randn(300, model.dim))
    x = torch.zeros(1, 1, 64, 96)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert counter.get_total_flops() == 2 * count_macs(model, tuple(x.shape))
    assert count_macs(model, tuple(x.shape)) > 8 * 12 * 300 * model.dim  # the products with the bank are in


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("anomaly")
    data = write_dagm(root / "data", n_per_class=30, size=64, defective_fraction=0.3, seed=2, classes=1)
    return {"root": root, "data": data, "res": _fit(root, data, "pc")}


def _fit(root: Path, data: Path, name: str, split_file: Path | None = None):
    """A patchcore-lite0 fit (bank 400) on the tiny set at 64x64."""
    cfg = C.resolve(
        overrides={
            "name": name,
            "out_dir": str(root / "runs"),
            "data": {"root": str(data), "size": 64, "split_file": None if split_file is None else str(split_file)},
            "train": {"task": "anomaly", "device": "cpu", "batch_size": 8},
            "model": {"options": {"bank_size": 400}},
        }
    )
    return fit(cfg, quiet=True)


def test_the_fit_uses_good_images_only_and_stores_the_bank_and_calibration(fitted):
    res = fitted["res"]
    ck = checkpoint.load_checkpoint(res.best)
    cfg = C.from_dict(ck["config"])
    assert cfg.model.name == "patchcore-lite0" and cfg.train.task == "anomaly" and ck["task"] == "segment"
    model, _ = checkpoint.model_from_checkpoint(ck)
    net = model.net
    assert net.bank.shape == (400, 152) and cfg.model.options["bank_size"] == 400
    assert torch.allclose(net.bank_sq, (net.bank * net.bank).sum(1))
    assert float(net.spread) > 0 and float(net.center) != 0
    report = (res.run_dir / "report.md").read_text()
    assert "memory bank of 400 of the" in report and "defective left out" in report
    from defectseg.data import load_dataset

    split = json.loads((res.run_dir / "split.json").read_text())
    defective = {s.key for s in load_dataset(cfg.data.root).samples if s.defective}
    left_out = len(defective & set(split["train"]))
    good = len(split["train"]) - left_out
    assert left_out > 0 and f"of {good} defect-free training images ({left_out} defective left out)" in report
    x = torch.from_numpy(np.zeros((1, 1, 64, 64), np.uint8))
    again, _ = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(res.last))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))  # best.pt and last.pt: the same fitted model
    with pytest.raises(ValueError, match="nothing to resume"):  # refused before the run folder is touched
        train(C.RunConfig(), resume=res.last, quiet=True)


def test_calibration_puts_good_validation_images_near_one_half(fitted):
    from defectseg.data import load_dataset, select
    from defectseg.data.io import defect_pixels
    from defectseg.rundata import split_dataset

    res = fitted["res"]
    model, cfg = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(res.best))
    spec = load_dataset(cfg.data.root)
    split = json.loads((res.run_dir / "split.json").read_text())
    val = split_dataset(cfg, spec, select(spec, split["val"]), [], False)
    good = [i for i in range(len(val)) if not defect_pixels(val.arrays(i)[1]).any()]
    with torch.no_grad():
        probs = [float(torch.sigmoid(model(val[i]["image"][None]).amax())) for i in good]
    assert good and abs(float(np.median(probs)) - 0.5) < 0.05


def test_a_validation_split_without_defects_sets_the_threshold_on_good_images(fitted, tmp_path):
    from defectseg.data import load_dataset, make_split

    spec = load_dataset(fitted["data"])
    split = make_split(spec, seed=0)
    defective = {s.key for s in spec.samples if s.defective}
    moved = [k for k in split["val"] if k in defective]
    split["val"] = [k for k in split["val"] if k not in defective]
    split["test"] = sorted(split["test"] + moved)
    (tmp_path / "split.json").write_text(json.dumps(split))
    res = _fit(fitted["root"], fitted["data"], "goodval", tmp_path / "split.json")
    report = (res.run_dir / "report.md").read_text()
    assert "val-frr instead" in report and "defect-free validation images NG" in report
    ck = checkpoint.load_checkpoint(res.best)
    assert 0 < ck["config"]["infer"]["threshold"] < 1  # not 0: that would call everything NG
    assert res.test_metrics["image_recall"] < 1 or res.test_metrics["image_precision"] > 0.3


def test_export_parity_and_predict_run_it_unchanged(fitted, tmp_path):
    from defectseg.export import export_checkpoint
    from defectseg.predictor import Predictor

    res = fitted["res"]
    report = export_checkpoint(res.best, tmp_path / "pc.onnx")
    assert report.ok, report  # the bank is a constant of the graph
    images = sorted((fitted["data"] / "Class1" / "Test").glob("*.PNG"))[:3]
    out = tmp_path / "pred"
    r = CliRunner().invoke(
        app, ["predict", "--checkpoint", str(tmp_path / "pc.onnx"), "--out", str(out), *map(str, images)]
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    eager = Predictor.from_checkpoint(res.best, device="cpu", backend="torch")
    for rec, path in zip(records, images):
        assert rec["verdict"] == eager.predict_paths([path]).__next__().verdict


def test_task_anomaly_from_the_command_line(fitted):
    def cli_fit(name: str, *options: str):
        args = ["train", "--data", str(fitted["data"]), "--task", "anomaly", "--size", "64", "--device", "cpu"]
        args += ["--set", "model.options.bank_size=200", *options]
        r = CliRunner().invoke(app, [*args, "--out-dir", str(fitted["root"] / "runs"), "--name", name, "-q"])
        assert r.exit_code == 0, r.output

    cli_fit("cli")
    assert (Path(fitted["root"]) / "runs" / "cli" / "report.md").is_file()
    cli_fit("pca", "--set", "model.options.dims=16")
    model, _ = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(fitted["root"] / "runs" / "pca" / "best.pt"))
    proj = model.net.proj
    assert model.net.bank.shape == (200, 16) and torch.allclose(proj.T @ proj, torch.eye(16), atol=1e-4)
    r = CliRunner().invoke(app, ["train", "--data", str(fitted["data"]), "--task", "anomaly", "--model", "unet-lite0"])
    assert r.exit_code != 0 and "pick a matching --model or --task" in " ".join(r.output.split())


def test_a_model_of_good_parts_gates_a_segmenter(fitted):
    """`--gate` takes an anomaly checkpoint: its image probability is the sigmoid of its map's highest logit at its
    own input size, compared with its own threshold; images below it are OK without segmentation, the others get
    the segmenter's result unchanged (here the segmenter is the same fitted model)."""
    from defectseg.predictor import Predictor

    res = fitted["res"]
    images = sorted((fitted["data"] / "Class1" / "Test").glob("*.PNG"))[:8]
    alone = list(Predictor.from_checkpoint(res.best, device="cpu", backend="torch").predict_paths(images))
    gated = Predictor.from_checkpoint(res.best, device="cpu", backend="torch", gate=res.best)
    model, cfg = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(res.best))
    assert gated.gate_threshold == cfg.infer.threshold
    from defectseg.data.io import read_image
    from defectseg.predictor import resize_image

    calls = []
    for r, a, path in zip(gated.predict_paths(images), alone, images):
        x = torch.from_numpy(resize_image(read_image(path, 1), (64, 64)).copy())[None, None]
        with torch.no_grad():
            want = float(torch.sigmoid(model(x).amax()))
        assert r.gate_probability == pytest.approx(want, abs=1e-5)
        called = r.gate_probability >= cfg.infer.threshold
        calls.append(called)
        if called:
            assert r.verdict == a.verdict and np.array_equal(r.mask, a.mask)
        else:
            assert r.verdict == "OK" and not r.mask.any() and not r.defects
    # an image the model calls NG has a pixel over its threshold, so the gate lets it through (the gate may pass more:
    # it does not ask for min_area pixels)
    assert all(c for c, a in zip(calls, alone) if a.verdict == "NG") and any(calls) and not all(calls)


def test_crop_mode_fits_every_native_patch_and_predict_tiles_with_it(tmp_path):
    """data.crop: the bank holds the patch vectors of whole images at native size (72² padded to 96², the padding's
    patches dropped: 9 x 9 per image), the calibration centres good validation images at native size, and predict
    runs tile mode on native pixels with the same model."""
    from defectseg.data import load_dataset
    from defectseg.data.io import read_image
    from defectseg.predictor import Predictor, padded_chw

    data = write_dagm(tmp_path / "data", n_per_class=40, size=72, defective_fraction=0.3, seed=3, classes=1)
    cfg = C.resolve(
        overrides={
            "name": "native",
            "out_dir": str(tmp_path / "runs"),
            "data": {"root": str(data), "crop": 48},
            "train": {"task": "anomaly", "device": "cpu"},
            "model": {"options": {"bank_size": 100}},
        }
    )
    res = fit(cfg, quiet=True)
    ck = checkpoint.load_checkpoint(res.best)
    assert ck["config"]["infer"]["tile"] >= 72  # predict and evaluate see native pixels, whole
    spec = load_dataset(data)
    split = json.loads((res.run_dir / "split.json").read_text())
    by_key = {s.key: s for s in spec.samples}
    good_train = [k for k in split["train"] if not by_key[k].defective]
    assert ck["metrics"]["patches"] == len(good_train) * 9 * 9

    model, _ = checkpoint.model_from_checkpoint(ck)

    def native_logits(path) -> torch.Tensor:
        x = torch.from_numpy(padded_chw(read_image(path, 1), 32).copy())[None]
        with torch.no_grad():
            return model(x)[0, 0, :72, :72]

    good_val = [by_key[k].image for k in split["val"] if not by_key[k].defective]
    assert good_val and abs(float(np.median([float(native_logits(p).max()) for p in good_val]))) < 1e-3
    predictor = Predictor.from_checkpoint(res.best, device="cpu", backend="torch")
    for r, path in zip(predictor.predict_paths(good_val[:3]), good_val[:3]):
        np.testing.assert_allclose(r.prob, torch.sigmoid(native_logits(path)).numpy(), atol=1e-4)


def test_one_good_validation_image_still_gives_a_usable_spread(tmp_path):
    """With one good validation image its maximum is the center and the percentiles give no spread: the spread
    is then a twentieth of the center, not a rounding-sized number that saturates every logit."""
    data = write_dagm(tmp_path / "data", n_per_class=16, size=64, defective_fraction=0.3, seed=3, classes=1)
    res = _fit(tmp_path, data, "one")
    assert "calibrated on 1 good validation images" in (res.run_dir / "report.md").read_text()
    model, _ = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(res.best))
    assert float(model.net.spread) == pytest.approx(0.05 * float(model.net.center), rel=1e-5)


def test_zero_pad_changes_border_patches_only_and_is_in_the_recipe():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 96)
    inside, zeros = (create_model("patchcore-lite0", pretrained=False, zero_pad=z).eval() for z in (False, True))
    zeros.load_state_dict(inside.state_dict())
    with torch.no_grad():
        a, b = inside.features(x), zeros.features(x)
    # the stride-8 layer's average is exact inside; the stride-16 layer, resampled, spreads its border one patch in
    torch.testing.assert_close(a[:, :, 2:-2, 2:-2], b[:, :, 2:-2, 2:-2])
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])
    cfg = C.resolve(overrides={"train": {"task": "anomaly"}})
    assert cfg.model.name == "patchcore-lite0" and cfg.model.options["zero_pad"] is True
