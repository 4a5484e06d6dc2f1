"""`defectseg predict` and `defectseg export` end to end on tiny synthetic DAGM data with models trained through
the trainer (a segmenter and a classifier gate), plus a hand-built reference-mode checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectseg import checkpoint, evaluate, trainer
from defectseg import config as C
from defectseg.cli import app
from defectseg.data.io import read_image, write_png
from defectseg.data.synthetic import write_dagm
from defectseg.models import create_model
from defectseg.predictor import Predictor

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Tiny DAGM folder; a CheapNet-S segmenter and a small VGG gate trained for one epoch each."""
    root = tmp_path_factory.mktemp("cli")
    data = write_dagm(root / "dagm", n_per_class=6, size=64, classes=2, defective_fraction=0.5, seed=3)
    common = {
        "out_dir": str(root / "runs"),
        "data": {"root": str(data), "format": "dagm", "size": 64, "augment": "none", "fractions": [0.7, 0.15, 0.15]},
    }
    seg = trainer.train(
        C.resolve(
            overrides={
                **common,
                "name": "seg",
                "model": {"name": "cheapnet-s"},
                "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
            }
        ),
        quiet=True,
    )
    gate = trainer.train(
        C.resolve(
            overrides={
                **common,
                "name": "gate",
                "model": {"name": "classifier-vgg", "options": {"widths": [4, 8]}},
                "train": {"task": "classify", "epochs": 1, "batch_size": 8, "device": "cpu"},
            }
        ),
        quiet=True,
    )
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    src = sorted(data.rglob("Class*/Test/*.PNG"))[:5]
    for i, p in enumerate(src):
        shutil.copy(p, images / ("sub" if i == 4 else "") / f"img{i}.PNG")  # upper-case suffix, nested folder
    (images / "notes.txt").write_text("not an image: ignored by the folder walk")
    return {"seg": seg.best, "gate": gate.best, "images": images, "root": root}


def _invoke(args: list[str]):
    res = runner.invoke(app, [str(a) for a in args])
    return res


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_writes_masks_overlays_jsonl_csv_and_skips_bad_files(trained, tmp_path: Path) -> None:
    images = tmp_path / "in"
    shutil.copytree(trained["images"], images)
    good = (images / "img0.PNG").read_bytes()
    (images / "broken.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    out = tmp_path / "out"
    (images / "img0_label.png").write_bytes(good)  # a mask file beside the images: not predicted
    shallow = _invoke(
        ["predict", images, "--checkpoint", trained["seg"], "--out", tmp_path / "shallow", "--device", "cpu", "-q"]
    )
    assert shallow.exit_code == 0, shallow.output
    assert [Path(r["path"]).name for r in _jsonl(tmp_path / "shallow" / "results.jsonl")] == [
        "broken.png",
        "img0.PNG",
        "img1.PNG",
        "img2.PNG",
        "img3.PNG",
    ]  # sub-folders only with --recursive
    assert "skipped 3 entries" in shallow.output and "pass --recursive" in shallow.output
    res = _invoke(
        [
            "predict",
            images,
            "--recursive",
            "--checkpoint",
            trained["seg"],
            "--out",
            out,
            "--threshold",
            "0.5",
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ]
    )
    assert res.exit_code == 0, res.output
    recs = _jsonl(out / "results.jsonl")
    names = [Path(r["path"]).name for r in recs]
    assert names == ["broken.png", "img0.PNG", "img1.PNG", "img2.PNG", "img3.PNG", "img4.PNG"]  # sorted walk
    (bad,) = [r for r in recs if r["error"]]
    assert bad["verdict"] == "ERROR" and "broken.png" in bad["error"] and bad["mask"] is None
    assert "broken.png" in res.output and "1 unreadable" in res.output and "img/s" in res.output
    for r in recs[1:]:
        assert (r["width"], r["height"]) == (64, 64) and r["verdict"] in ("OK", "NG")
        assert r["verdict"] == ("NG" if r["defects"] else "OK") and r["gate_probability"] is None
        mask = read_image(out / r["mask"])
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert int((mask == 255).sum()) == sum(d["area"] for d in r["defects"])
        assert read_image(out / r["overlay"]).shape == (64, 64, 3)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == sum(max(1, len(r["defects"])) for r in recs)
    assert {Path(row["path"]).name for row in rows} == set(names)
    n_ng = sum(r["verdict"] == "NG" for r in recs)
    assert f"{n_ng} NG" in res.output


def test_predict_matches_the_predictor_on_a_known_defect(trained, tmp_path: Path) -> None:
    """A defect the model must see: a 12x10 dark blob on a flat image at an odd size; both the CLI's boxes and the
    Predictor's agree, and the --no-overlays switch writes masks only."""
    pred = Predictor.from_checkpoint(trained["seg"], device="cpu", threshold=0.5)
    img = np.full((75, 131), 128, np.uint8)
    img[20:30, 70:82] = 0
    write_png(tmp_path / "odd.png", img)
    res = _invoke(
        [
            "predict",
            tmp_path / "odd.png",
            "--checkpoint",
            trained["seg"],
            "--out",
            tmp_path / "o",
            "--device",
            "cpu",
            "--no-overlays",
            "--threshold",
            "0.5",
        ]
    )
    assert res.exit_code == 0, res.output
    (rec,) = _jsonl(tmp_path / "o" / "results.jsonl")
    assert rec["defects"] == json.loads(json.dumps(pred.predict(img).to_json()["defects"]))
    assert (tmp_path / "o" / "odd_mask.png").exists() and not (tmp_path / "o" / "odd_overlay.png").exists()


def test_predict_exit_code_when_nothing_readable(trained, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_text("garbage")
    res = _invoke(
        ["predict", tmp_path / "a.png", "--checkpoint", trained["seg"], "--out", tmp_path / "o", "--device", "cpu"]
    )
    assert res.exit_code == 1 and "no image could be read" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _invoke(["predict", empty, "--checkpoint", trained["seg"], "--out", tmp_path / "o2"])
    assert res.exit_code == 2 and "no image files" in res.output


def test_cascade_gate_end_to_end(trained, tmp_path: Path) -> None:
    base = ["predict", trained["images"], "--checkpoint", trained["seg"], "--device", "cpu", "--gate", trained["gate"]]
    res = _invoke(base + ["--out", tmp_path / "all", "--gate-threshold", "0"])
    assert res.exit_code == 0, res.output
    plain = _invoke(
        ["predict", trained["images"], "--checkpoint", trained["seg"], "--device", "cpu", "--out", tmp_path / "plain"]
    )
    gated_all = _jsonl(tmp_path / "all" / "results.jsonl")
    assert all(0.0 <= r["gate_probability"] <= 1.0 for r in gated_all)
    # threshold 0: the gate passes everything, so the defects are the plain segmenter's
    assert [r["defects"] for r in gated_all] == [r["defects"] for r in _jsonl(tmp_path / "plain" / "results.jsonl")]
    res = _invoke(base + ["--out", tmp_path / "none", "--gate-threshold", "1"])
    assert res.exit_code == 0 and plain.exit_code == 0
    gated_none = _jsonl(tmp_path / "none" / "results.jsonl")
    assert all(r["verdict"] == "OK" and r["defects"] == [] for r in gated_none)
    assert [r["gate_probability"] for r in gated_none] == [r["gate_probability"] for r in gated_all]
    assert not read_image(tmp_path / "none" / gated_none[0]["mask"]).any()


def test_evaluate_behind_a_gate_is_the_cascade_and_takes_post_processing_overrides(trained, tmp_path: Path) -> None:
    # The one-epoch segmenter finds nothing at 0.5; at threshold 0 it calls every pixel of every image a defect.
    seg = tmp_path / "run" / "best.pt"
    seg.parent.mkdir()
    shutil.copy(Path(trained["seg"]).parent / "split.json", seg.parent / "split.json")
    ckpt = checkpoint.load_checkpoint(trained["seg"])
    ckpt["config"]["infer"]["threshold"] = 0.0
    checkpoint.save_checkpoint(seg, ckpt)
    plain = evaluate.evaluate_checkpoint(seg, device="cpu")
    assert plain["image_recall"] == 1.0 and plain["defect_iou"] > 0
    # --threshold overrides the stored one, as predict's does
    overridden = evaluate.evaluate_checkpoint(trained["seg"], device="cpu", threshold=0.0)
    assert json.dumps(overridden) == json.dumps(plain)
    assert evaluate.evaluate_checkpoint(seg, device="cpu", threshold=1.0)["image_recall"] == 0.0
    # gate threshold 0 passes every image to the segmenter: the plain figures
    passed = evaluate.evaluate_checkpoint(seg, device="cpu", gate=trained["gate"], gate_threshold=0.0)
    assert json.dumps(passed) == json.dumps(plain)  # NaN-aware equality
    # gate threshold 1 stops every image: all OK, no defect pixel, no region found
    shut = evaluate.evaluate_checkpoint(seg, device="cpu", gate=trained["gate"], gate_threshold=1.0)
    assert shut["image_recall"] == 0.0 and shut["defect_iou"] == 0.0 and shut["region_recall50"] == 0.0
    res = _invoke(
        [
            "evaluate",
            "--checkpoint",
            seg,
            "--device",
            "cpu",
            "--gate",
            trained["gate"],
            "--gate-threshold",
            "1",
            "--json",
            tmp_path / "m.json",
        ]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m.json").read_text())["image_recall"] == 0.0
    res = _invoke(["evaluate", "--checkpoint", trained["seg"], "--gate", trained["seg"]])
    assert res.exit_code != 0 and "classifier" in res.output
    res = _invoke(["evaluate", "--checkpoint", trained["seg"], "--threshold", "2"])
    assert res.exit_code == 2 and "not a probability" in res.output


def test_export_then_predict_with_onnx_gives_the_same_defects(trained, tmp_path: Path) -> None:
    onnx_path = tmp_path / "deploy" / "model.onnx"
    res = _invoke(["export", "--checkpoint", trained["seg"], "--format", "onnx", "--out", onnx_path])
    assert res.exit_code == 0, res.output
    assert str(onnx_path) in res.output.replace("\n", "") and "parity: max |onnxruntime - torch|" in res.output
    # a threshold low enough that this barely trained model reports defects on some images
    pred = Predictor.from_checkpoint(trained["seg"], device="cpu")
    probs = [r.prob for r in pred.predict_paths(sorted(trained["images"].rglob("*.PNG")))]
    # At a gap between probability values, so float32 differences (~1e-7) cannot flip a pixel at the threshold.
    values = np.unique(np.concatenate([p.ravel() for p in probs]))
    start = int(len(values) * 0.97)
    gap = start + int(np.argmax(np.diff(values[start:]) > 1e-4))
    assert values[gap + 1] - values[gap] > 1e-4
    thr = float(values[gap] + values[gap + 1]) / 2
    outs = {}
    for name, ck in (("pt", trained["seg"]), ("onnx", onnx_path)):
        res = _invoke(
            [
                "predict",
                trained["images"],
                "--checkpoint",
                ck,
                "--out",
                tmp_path / name,
                "--device",
                "cpu",
                "--threshold",
                f"{thr:.6f}",
                "--min-area",
                "1",
            ]
        )
        assert res.exit_code == 0, res.output
        outs[name] = _jsonl(tmp_path / name / "results.jsonl")
    assert sum(len(r["defects"]) for r in outs["pt"]) > 0
    key = lambda d: (d["y1"], d["x1"], d["y2"], d["x2"])  # equal scores may sort either way
    for a, b in zip(outs["pt"], outs["onnx"]):
        da, db = sorted(a["defects"], key=key), sorted(b["defects"], key=key)
        assert [{k: v for k, v in d.items() if k != "score"} for d in da] == [
            {k: v for k, v in d.items() if k != "score"} for d in db
        ]
        assert [d["score"] for d in da] == pytest.approx([d["score"] for d in db], abs=1e-5)


def test_export_static_and_errors(trained, tmp_path: Path) -> None:
    res = _invoke(["export", "--checkpoint", trained["seg"], "--out", tmp_path / "s.onnx", "--static", "--size", "32"])
    assert res.exit_code == 0, res.output
    pred = Predictor.from_checkpoint(tmp_path / "s.onnx", device="cpu")
    assert pred.segmenter.input_hw == (32, 32) and pred.predict(np.zeros((40, 50), np.uint8)).prob.shape == (40, 50)
    res = _invoke(["export", "--checkpoint", trained["seg"], "--size", "30", "--out", tmp_path / "x.onnx"])
    assert res.exit_code == 2 and "multiple of 16" in res.output
    res = _invoke(["export", "--checkpoint", trained["seg"], "--format", "tflite"])
    assert res.exit_code == 2 and "--format onnx" in res.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not-onnx" * 20)
    res = _invoke(["predict", trained["images"], "--checkpoint", bad, "--out", tmp_path / "o"])
    assert res.exit_code == 2 and "bad.onnx" in res.output


def test_reference_mode_cli(tmp_path: Path) -> None:
    cfg = C.RunConfig()
    cfg.model.name, cfg.data.size, cfg.data.channels, cfg.data.reference = "cheapnet-s", 64, 1, "golden.png"
    torch.manual_seed(0)
    model = create_model("cheapnet-s", in_channels=2)
    ck = checkpoint.save_checkpoint(
        tmp_path / "ref.pt",
        {
            "config": cfg.to_dict(),
            "num_classes": 1,
            "class_names": ["background", "defect"],
            "task": "segment",
            "model": model.state_dict(),
        },
    )
    write_png(tmp_path / "golden.png", np.full((48, 80), 90, np.uint8))
    write_png(tmp_path / "img.png", np.full((48, 80), 100, np.uint8))
    res = _invoke(["predict", tmp_path / "img.png", "--checkpoint", ck, "--out", tmp_path / "o", "--device", "cpu"])
    assert res.exit_code == 2 and "--reference" in res.output
    res = _invoke(
        [
            "predict",
            tmp_path / "img.png",
            "--checkpoint",
            ck,
            "--out",
            tmp_path / "o",
            "--device",
            "cpu",
            "--reference",
            tmp_path / "golden.png",
            "--tile",
            "32",
            "--tile-overlap",
            "8",
        ]
    )
    assert res.exit_code == 0, res.output
    (rec,) = _jsonl(tmp_path / "o" / "results.jsonl")
    assert (rec["width"], rec["height"], rec["error"]) == (80, 48, None)
    # the ONNX export carries reference mode along
    assert _invoke(["export", "--checkpoint", ck, "--out", tmp_path / "ref.onnx"]).exit_code == 0
    pred = Predictor.from_checkpoint(tmp_path / "ref.onnx", device="cpu", reference=tmp_path / "golden.png")
    assert pred.segmenter.uses_reference and pred.segmenter.input_channels == 2
