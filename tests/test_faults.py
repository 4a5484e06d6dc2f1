"""Bad inputs and faults a production user hits: nothing overwritten, nothing read back, nothing silent, and a
one-line error that says how to fix it (docs/reliability.md lists the cases)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from test_infer import _save  # a checkpoint as training writes one
from typer.testing import CliRunner

from defectseg.cli import app
from defectseg.data.synthetic import write_dagm

runner = CliRunner()


def _ok(args: list[str]):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def _refused(args: list[str], *needles: str):
    res = runner.invoke(app, args)
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # no traceback
    # rich wraps long messages (in a box for usage errors), even inside a path: compare without whitespace
    flat = "".join(res.output.replace("│", " ").split())
    for n in needles:
        assert "".join(n.split()) in flat, (n, res.output)
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch run on tiny synthetic data, trained with a relative data path from another folder."""
    root = tmp_path_factory.mktemp("faults")
    write_dagm(root / "data", n_per_class=8, size=32, defective_fraction=0.5, seed=3, classes=1)
    images = root / "images"
    images.mkdir()
    for p in sorted((root / "data" / "Class1" / "Test").glob("*.PNG"))[:3]:
        shutil.copy(p, images / p.name)
    shutil.copy(next(images.iterdir()), images / "=1+1.png")
    import os

    cwd = os.getcwd()
    os.chdir(root)  # the data path is given relative to here
    try:
        _ok(
            [
                "train",
                "--data",
                "data",
                "--size",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--model",
                "cheapmix-s",
                "--out-dir",
                "runs",
                "--name",
                "r",
                "-q",
            ]
        )
    finally:
        os.chdir(cwd)
    return {"root": root, "ckpt": root / "runs" / "r" / "best.pt", "images": images}


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "a\\b", ".."])
def test_run_name_cannot_escape_out_dir(tmp_path, name):
    _refused(
        ["train", "--data", str(tmp_path), "--out-dir", str(tmp_path / "runs"), "--name", name],
        "name:",
        "plain run name",
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_data_root_is_stored_resolved_and_evaluate_runs_from_anywhere(run, tmp_path, monkeypatch):
    cfg = yaml.safe_load((run["ckpt"].parent / "config.yaml").read_text())
    assert Path(cfg["data"]["root"]).is_absolute() and Path(cfg["data"]["root"]) == (run["root"] / "data")
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative "data" would not resolve here
    out = tmp_path / "m.json"
    _ok(["evaluate", "--checkpoint", str(run["ckpt"]), "--json", str(out)])
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["defect_iou"] >= 0


def test_evaluate_json_writes_null_for_undefined_metrics(run, tmp_path):
    out = tmp_path / "m.json"
    _ok(["evaluate", "--checkpoint", str(run["ckpt"]), "--split", "train", "--json", str(out)])
    values = json.loads(out.read_text())  # json.loads accepts NaN; the text must not hold it
    assert "NaN" not in out.read_text() and all(v is None or v == v for v in values.values())


def test_evaluate_refuses_an_onnx_file_with_what_to_pass(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not used")
    _refused(["evaluate", "--checkpoint", str(model)], "exported model", "best.pt")


def test_predict_never_writes_into_its_input_folder(run):
    before = sorted(p.name for p in run["images"].iterdir())
    _refused(
        ["predict", str(run["images"]), "--checkpoint", str(run["ckpt"]), "--out", str(run["images"]), "-q"],
        "holds input images",
        "separate output folder",
    )
    assert sorted(p.name for p in run["images"].iterdir()) == before


def test_predict_refuses_a_non_empty_output_unless_overwrite_then_leaves_no_stale_file(run, tmp_path):
    out = tmp_path / "pred"
    args = ["predict", str(run["images"]), "--checkpoint", str(run["ckpt"]), "--out", str(out), "-q"]
    _ok(args)
    assert len(list(out.glob("*_overlay.png"))) == 4
    _refused(args, "not empty", "--overwrite")
    (out / "mine.txt").write_text("a user's own file")
    _ok(args + ["--overwrite", "--no-overlays"])
    assert not list(out.glob("*_overlay.png"))  # the previous run's overlays are gone, not left stale
    assert (out / "mine.txt").read_text() == "a user's own file"  # what predict did not write stays
    assert len(out.joinpath("results.jsonl").read_text().splitlines()) == 4


def test_predict_does_not_read_its_output_folder_back_as_input(run, tmp_path, monkeypatch):
    work = tmp_path / "line"
    shutil.copytree(run["images"], work)
    monkeypatch.chdir(work)
    _ok(["predict", ".", "--checkpoint", str(run["ckpt"]), "-r", "-q"])  # default --out: predictions/ in here
    for out, why in (("predictions", "the output folder"), ("second", "an earlier prediction's output folder")):
        res = _ok(["predict", ".", "--checkpoint", str(run["ckpt"]), "-r", "-q", "--out", out, "--overwrite"])
        assert why in " ".join(res.output.split())
        rows = list(csv.DictReader(open(work / out / "results.csv")))
        assert len(rows) == 4 and not any("predictions" in r["path"] for r in rows)


def test_csv_cells_cannot_run_as_spreadsheet_formulas(run, tmp_path, monkeypatch):
    monkeypatch.chdir(run["images"])
    _ok(["predict", "=1+1.png", "--checkpoint", str(run["ckpt"]), "--out", str(tmp_path / "p"), "-q"])
    rows = list(csv.DictReader(open(tmp_path / "p" / "results.csv")))
    assert [r["path"] for r in rows] == ["'=1+1.png"]
    assert json.loads((tmp_path / "p" / "results.jsonl").read_text())["path"] == "=1+1.png"  # JSON keeps it


def test_data_synth_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "syn"
    _ok(["data", "synth", "--out", str(out), "--n-per-class", "6", "--size", "32", "--classes", "1"])
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _refused(
        ["data", "synth", "--out", str(out), "--n-per-class", "3", "--size", "32", "--classes", "1"],
        "not empty",
        "--overwrite",
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    _ok(["data", "synth", "--out", str(out), "--n-per-class", "3", "--size", "32", "--classes", "1", "--overwrite"])
    _ok(["data", "stats", str(out)])  # the replaced data loads (no files of the first synth left)
    assert len(list((out / "Class1").rglob("*.PNG"))) < len([p for p in before if p.suffix == ".PNG"])


def test_unwritable_outputs_are_one_line_errors(run, tmp_path):
    """A path under a regular file cannot be created, even as root (chmod would not stop root)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    ck = str(run["ckpt"])
    _refused(
        [
            "train",
            "--data",
            str(run["root"] / "data"),
            "--size",
            "32",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out-dir",
            str(blocker / "runs"),
            "--name",
            "r",
            "-q",
        ],
        "cannot write the run folder",
        "--out-dir",
    )
    _refused(
        ["predict", str(run["images"]), "--checkpoint", ck, "--out", str(blocker / "p"), "-q"],
        "cannot create the output folder",
        "writable --out",
    )
    _refused(["export", "--checkpoint", ck, "--out", str(blocker / "m.onnx")], "cannot write", "writable --out")
    _refused(["evaluate", "--checkpoint", ck, "--json", str(blocker / "m.json")], "cannot write", "--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_checkpoint_that_would_run_code_is_refused_plainly(tmp_path):
    import os

    import torch

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    torch.save({"format": "defectseg-checkpoint-v2", "x": RunsCode()}, tmp_path / "evil.pt")
    res = _refused(
        ["evaluate", "--checkpoint", str(tmp_path / "evil.pt")],
        "is not a safe checkpoint",
        "will not be loaded",
        "system",
    )
    assert "weights_only" not in res.output and not (tmp_path / "ran").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """A full disk mid-write (torch.save raising after writing part of the file) leaves the old file whole and
    no temp file behind."""
    import torch

    from defectseg import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _train_args(run, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(run["root"] / "data"),
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--model",
        "cheapmix-s",
        "--out-dir",
        str(out),
        "--name",
        "r",
        "-q",
        *extra,
    ]


def test_a_second_training_into_a_locked_run_folder_is_refused(run, tmp_path):
    import socket
    import subprocess

    folder = tmp_path / "r"
    folder.mkdir()
    live = subprocess.Popen(["sleep", "60"])  # stands for a training that is still running
    try:
        (folder / ".lock").write_text(f"{live.pid} {socket.gethostname()}")
        _refused(_train_args(run, tmp_path), "in use by another training", str(live.pid), "another --name")
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing of the refused run was written
    finally:
        live.kill()
        live.wait()
    # Its process is gone now: the lock is stale and the next run takes it, then releases it.
    _ok(_train_args(run, tmp_path))
    assert (folder / "best.pt").is_file() and not (folder / ".lock").exists()


def test_a_stale_split_file_in_the_run_folder_does_not_override_split_file(run, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    all_keys = json.loads((run["ckpt"].parent / "split.json").read_text())
    stale = {k: all_keys[k] for k in ("train", "val", "test")}
    stale["test"], stale["val"] = stale["val"], stale["test"]  # a different split, left by a failed start
    (folder / "split.json").write_text(json.dumps(stale))
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({k: all_keys[k] for k in ("train", "val", "test")}))
    _ok(_train_args(run, tmp_path, "--split-file", str(chosen)))
    used = json.loads((folder / "split.json").read_text())
    assert used["test"] == all_keys["test"] and used["val"] == all_keys["val"]


def test_kill_9_during_training_then_resume_finishes(run, tmp_path):
    """SIGKILL mid-run leaves a loadable last.pt (written atomically) and a stale lock; --resume finishes."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "r"
    args = _train_args(run, tmp_path)
    args[args.index("--epochs") + 1] = "12"
    proc = subprocess.Popen(
        [sys.executable, "-m", "defectseg.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (folder / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / ".lock").exists()  # left behind by the killed process
    from defectseg import checkpoint

    epoch = checkpoint.load_checkpoint(folder / "last.pt")["epoch"]  # never torn
    assert 0 <= epoch < 11
    _ok(["train", "--resume", str(folder / "last.pt"), "-q"])
    assert checkpoint.load_checkpoint(folder / "last.pt")["epoch"] == 11 and not (folder / ".lock").exists()


def test_an_image_over_the_pixel_cap_is_refused_from_its_header(run, tmp_path, monkeypatch):
    """A small PNG that claims 12500 x 12500 pixels (156 M, over the default cap) is refused before decoding; the
    other images of the folder are still predicted. The cap is configurable."""
    import resource

    from PIL import Image

    from defectseg.data.io import read_image

    folder = tmp_path / "in"
    shutil.copytree(run["images"], folder)
    Image.new("1", (12500, 12500)).save(folder / "bomb.png")  # 1 bit per pixel in memory, a few KB on disk
    assert (folder / "bomb.png").stat().st_size < 100_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="over the cap of 150,000,000 pixels.*DEFECTSEG_MAX_PIXELS"):
        read_image(folder / "bomb.png")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # KB: never decoded
    res = runner.invoke(
        app, ["predict", str(folder), "--checkpoint", str(run["ckpt"]), "--out", str(tmp_path / "p"), "-q"]
    )
    assert res.exit_code == 0 and "over the cap" in " ".join(res.output.split())
    rows = [json.loads(line) for line in (tmp_path / "p" / "results.jsonl").read_text().splitlines()]
    assert sum(r["verdict"] == "ERROR" for r in rows) == 1 and len(rows) == 5
    monkeypatch.setenv("DEFECTSEG_MAX_PIXELS", "1000")
    with pytest.raises(ValueError, match="32x32 pixels is over the cap of 1,000"):
        read_image(next(run["images"].glob("*.PNG")))
    monkeypatch.setenv("DEFECTSEG_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="DEFECTSEG_MAX_PIXELS must be a positive integer"):
        read_image(next(run["images"].glob("*.PNG")))


def test_an_unreadable_file_in_any_split_fails_before_training_or_is_listed_with_skip_bad(run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(run["root"] / "data", data)
    victims = sorted((data / "Class1" / "Test").glob("*.PNG"))[:2]
    for v in victims:  # truncated: the header reads, the pixels do not
        v.write_bytes(v.read_bytes()[: v.stat().st_size // 2])
    args = [
        "train",
        "--data",
        str(data),
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--model",
        "cheapmix-s",
        "--out-dir",
        str(tmp_path / "runs"),
        "--name",
        "r",
        "-q",
    ]
    _refused(args, "2 samples cannot be read", victims[0].name, "--skip-bad")
    assert not (tmp_path / "runs" / "r" / "metrics.csv").exists()  # refused before the first epoch
    res = _ok(args + ["--skip-bad"])
    for v in victims:
        assert f"skipped {v}" in res.output.replace("\n", "")
    report = (tmp_path / "runs" / "r" / "report.md").read_text()
    assert "## Skipped files (2)" in report and all(v.name in report for v in victims)
    split = json.loads((tmp_path / "runs" / "r" / "split.json").read_text())
    used = re.search(r"split: train (\d+) / val (\d+) / test (\d+) images used", report).groups()
    assert sum(map(int, used)) + 2 == sum(len(split[k]) for k in ("train", "val", "test"))
    res = _ok(["evaluate", "--checkpoint", str(tmp_path / "runs" / "r" / "best.pt"), "--device", "cpu"])
    test_victims = [v for v in victims if any(v.name in k for k in split["test"])]
    assert test_victims
    for v in test_victims:  # evaluate leaves the same files out, and says so
        assert f"skipped {v}" in res.output.replace("\n", "")


def _write_generic(root: Path, n: int, defective: int, values: tuple[int, ...] = (255,)) -> Path:
    """images/ + masks/ with a mask file for every image; the first `defective` masks hold a defect, one
    square per value in `values`."""
    import numpy as np

    from defectseg.data.io import write_png

    rng = np.random.default_rng(0)
    for j in range(n):
        write_png(root / "images" / f"p{j:03d}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        if j < defective:
            for k, v in enumerate(values):
                mask[8:16, 8 * k : 8 * k + 6] = v
        write_png(root / "masks" / f"p{j:03d}.png", mask)
    return root


def test_generic_split_is_stratified_by_defect_and_a_split_without_defects_is_reported(tmp_path):
    from defectseg.data import load_dataset
    from defectseg.data.splits import make_split

    # 40 images, 8 with a defect: each split gets defective ones in proportion (val and test 15 %: one or two).
    spec = load_dataset(_write_generic(tmp_path / "g", 40, 8))
    defective = {f"images/p{j:03d}.png" for j in range(8)}
    for seed in range(4):  # unstratified, seeds 1-3 gave [4, 2, 2], [5, 1, 2], [4, 3, 1]
        split = make_split(spec, (0.7, 0.15, 0.15), seed=seed)
        assert [len(defective & set(split[k])) for k in ("train", "val", "test")] == [6, 1, 1], seed
    # With a single defective image, one of validation or test has none: training says so.
    one = _write_generic(tmp_path / "one", 12, 1)
    res = _ok(
        [
            "train",
            "--data",
            str(one),
            "--size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--model",
            "cheapmix-s",
            "--out-dir",
            str(tmp_path / "runs"),
            "--name",
            "r",
            "-q",
        ]
    )
    flat = " ".join(res.output.split())
    assert "split has no defective image among its" in flat and "data.fractions" in flat


@pytest.mark.parametrize(
    "option, message",
    [
        (["--batch-size", "0"], "train.batch_size: expected >= 1, got 0"),
        (["--size", "0"], "data.size: expected >= 1, got 0"),
        (["--set", "train.lr=abc"], "train.lr: expected a number, got 'abc'"),
        (["--lr", "0"], "train.lr: expected > 0"),
        (["--epochs", "0"], "train.epochs: expected >= 1, got 0"),
        (["--epochs", "-1"], "train.epochs: expected >= 1, got -1"),
        (["--set", "train.iterations=0"], "train.iterations: expected null or >= 1, got 0"),
        (["--set", "infer.min_area=-5"], "infer.min_area: expected >= 0, got -5"),
    ],
)
def test_bad_training_options_are_one_line_errors(tmp_path, option, message):
    _refused(["train", "--data", str(tmp_path), "--out-dir", str(tmp_path / "runs"), *option], message)
    assert not (tmp_path / "runs").exists()


def test_resume_after_a_kill_between_the_metrics_row_and_last_pt_lists_each_epoch_once(run, tmp_path):
    """The epoch loop appends the metrics row, then writes last.pt: a kill between the two leaves a row for an
    epoch that --resume redoes. The resumed run drops it, so metrics.csv has one row per epoch."""
    from defectseg import checkpoint

    args = _train_args(run, tmp_path)
    args[args.index("--epochs") + 1] = "3"
    _ok(args + ["--set", "train.seed=0"])
    folder = tmp_path / "r"
    last = checkpoint.load_checkpoint(folder / "last.pt")
    # Simulate the kill: last.pt back at epoch 1 (index 0) while metrics.csv already lists epochs 1-3.
    checkpoint.save_checkpoint(folder / "last.pt", {**{k: v for k, v in last.items() if k != "format"}, "epoch": 0})
    _ok(["train", "--resume", str(folder / "last.pt"), "-q"])
    epochs = [r["epoch"] for r in csv.DictReader(open(folder / "metrics.csv"))]
    assert epochs == ["1", "2", "3"]


def test_read_mask_refuses_ambiguous_values_and_follows_the_chosen_rule(tmp_path):
    import numpy as np
    from PIL import Image

    from defectseg.data.io import read_mask

    a = np.zeros((16, 16), np.uint8)
    a[2:6, 2:6], a[2:6, 8:12], a[8:12, 2:6] = 1, 2, 255
    Image.fromarray(a).save(tmp_path / "m.png")
    with pytest.raises(ValueError, match=r"ambiguous mask values \(0, 1, 2, 255\).*data.mask_rule=gt0"):
        read_mask(tmp_path / "m.png", "auto")
    assert read_mask(tmp_path / "m.png", "gt0").sum() == 48
    assert read_mask(tmp_path / "m.png", "gt127").sum() == 16
    assert sorted(np.unique(read_mask(tmp_path / "m.png", "ids"))) == [0, 1, 2, 255]
    # Unambiguous masks keep the automatic rule: 0/1 ids, 0/255 binary, and a noisy JPEG of a 0/255 mask.
    for values, expect in [((0, 1), 16), ((0, 255), 16)]:
        b = np.full((16, 16), values[0], np.uint8)
        b[2:6, 2:6] = values[1]
        Image.fromarray(b).save(tmp_path / "b.png")
        assert read_mask(tmp_path / "b.png", "auto").sum() == expect
    b = np.zeros((64, 64), np.uint8)
    b[10:40, 10:40] = 255
    Image.fromarray(b).save(tmp_path / "b.jpg", quality=50)
    got = read_mask(tmp_path / "b.jpg", "auto")
    assert got.max() == 1 and abs(int(got.sum()) - 900) < 60


def test_an_ambiguous_mask_set_is_refused_before_training_and_a_chosen_rule_trains(tmp_path):
    data = _write_generic(tmp_path / "data", 8, 4, values=(1, 2, 255))
    _refused(["data", "stats", str(data)], "ambiguous mask values (0, 1, 2, 255)", "data.mask_rule=gt0")
    res = _ok(["data", "stats", str(data), "--mask-rule", "gt0", "--json"])
    assert json.loads(res.output)["defective"] == 4
    common = [
        "train",
        "--data",
        str(data),
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--model",
        "cheapmix-s",
        "--out-dir",
        str(tmp_path / "runs"),
        "-q",
    ]
    res = _refused([*common, "--name", "amb"], "ambiguous mask values", "data.mask_rule")
    assert not (tmp_path / "runs" / "amb" / "metrics.csv").exists()  # refused before the first epoch
    _ok([*common, "--name", "gt0", "--set", "data.mask_rule=gt0"])
    cfg = yaml.safe_load((tmp_path / "runs" / "gt0" / "config.yaml").read_text())
    assert cfg["data"]["mask_rule"] == "gt0"


# ----------------------------------------------------------------------------- the second probe: image files
def _png_with_sbit(path: Path, a, bits: int) -> None:
    """A 16-bit gray PNG with an sBIT chunk declaring `bits` significant bits (inserted after IHDR)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    raw = buf.getvalue()
    chunk = b"sBIT" + bytes([bits])
    sbit = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(raw[:33] + sbit + raw[33:])  # signature (8) + IHDR (25)


def test_sixteen_bit_images_scale_by_their_bit_depth(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from defectseg.data.io import read_image

    a = np.zeros((8, 8), np.uint16)
    a[2:4, 2:4] = 4095  # a 12-bit camera's white
    _png_with_sbit(tmp_path / "declared.png", a, 12)
    assert read_image(tmp_path / "declared.png").max() == 255
    Image.fromarray(a).save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.png").max() == 16  # no declaration: the 16-bit container's range
    monkeypatch.setenv("DEFECTSEG_BIT_DEPTH", "12")
    assert read_image(tmp_path / "plain.png").max() == 255
    a[0, 0] = 5000
    Image.fromarray(a).save(tmp_path / "over.png")
    with pytest.raises(ValueError, match="over.png: holds values 0 to 5000, outside the 12-bit range"):
        read_image(tmp_path / "over.png")
    monkeypatch.setenv("DEFECTSEG_BIT_DEPTH", "twelve")
    with pytest.raises(ValueError, match="DEFECTSEG_BIT_DEPTH must be a bit depth"):
        read_image(tmp_path / "plain.png")


def test_float_images_must_be_finite_and_in_unit_range(tmp_path):
    import numpy as np
    from PIL import Image

    from defectseg.data.io import read_image

    f = np.full((8, 8), 0.5, np.float32)
    Image.fromarray(f).save(tmp_path / "ok.tif")
    assert read_image(tmp_path / "ok.tif").max() == 128
    for name, bad, says in (("inf", np.inf, "NaN or infinite"), ("nan", np.nan, "NaN"), ("big", 3.0, "[0, 1]")):
        g = f.copy()
        g[0, 0] = bad
        Image.fromarray(g).save(tmp_path / f"{name}.tif")
        with pytest.raises(ValueError, match=re.escape(says)):
            read_image(tmp_path / f"{name}.tif")


def test_exif_orientation_is_applied_to_images_masks_and_sizes(tmp_path):
    import numpy as np
    from PIL import Image

    from defectseg.data.io import image_size, read_image, read_mask

    stored = np.zeros((20, 30), np.uint8)
    stored[0:4, 0:6] = 255  # top-left as stored
    for orientation, corner in ((3, (19, 29)), (6, (0, 19))):
        im = Image.fromarray(stored)
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(tmp_path / f"o{orientation}.png", exif=exif)
        shown = read_image(tmp_path / f"o{orientation}.png")
        assert shown[corner] == 255 and shown.shape == image_size(tmp_path / f"o{orientation}.png")
        assert np.array_equal(read_mask(tmp_path / f"o{orientation}.png", "gt127") * 255, shown)
    assert read_image(tmp_path / "o6.png").shape == (30, 20)  # a quarter turn: as a viewer shows it


def test_files_of_several_frames_fifos_and_devices_are_refused_by_name(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    from defectseg.data.io import read_image

    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tif"):
        with pytest.raises(ValueError, match=f"{name}: holds 2 frames or pages"):
            read_image(tmp_path / name)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    for name in ("fifo.png", "zero.png"):
        with pytest.raises(ValueError, match=f"{name}: not a regular file"):
            read_image(tmp_path / name)
    # given to predict directly: an ERROR record each, no hang, the rest inspected
    frames[0].save(tmp_path / "good.png")
    ckpt = _save(tmp_path / "m.pt")
    names = ("fifo.png", "zero.png", "good.png")
    _ok(["predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *(str(tmp_path / n) for n in names)])
    recs = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in recs] == ["ERROR", "ERROR", "OK"]
    assert "not a regular file" in recs[0]["error"] and "--skip-bad" not in recs[0]["error"]


def test_a_linked_device_in_a_dataset_is_named_not_its_mask(tmp_path):
    from defectseg.data import load_dataset

    root = _write_generic(tmp_path / "g", 4, 1)
    (root / "images" / "p001.png").unlink()
    (root / "images" / "p001.png").symlink_to("/dev/zero")
    spec = load_dataset(root)  # listed as a sample (its decode names it), not "mask without an image"
    assert any(s.key == "images/p001.png" for s in spec.samples)


def test_no_output_replaces_an_input_or_a_checkpoint_and_existing_files_need_overwrite(tmp_path):
    from defectseg.data.io import claim_file, write_atomic

    ckpt = _save(tmp_path / "m.pt")
    other = _save(tmp_path / "other.pt")
    _refused(["export", "--checkpoint", str(ckpt), "--out", str(ckpt)], "is an input of this command")
    _refused(["export", "--checkpoint", str(ckpt), "--out", str(other)], "is a checkpoint, which no output replaces")
    onnx = tmp_path / "m.onnx"
    _ok(["export", "--checkpoint", str(ckpt)])
    _refused(["export", "--checkpoint", str(ckpt)], f"{onnx} exists; pass --overwrite")
    _ok(["export", "--checkpoint", str(ckpt), "--overwrite"])
    table = tmp_path / "t.md"
    table.write_text("mine\n")
    _refused(["benchmark", "--models", "cheapnet-s", "--size", "32", "--out", str(table)], "pass --overwrite")
    assert table.read_text() == "mine\n"
    renamed = tmp_path / "weights.bin"  # a checkpoint by its content, whatever its name
    renamed.write_bytes(ckpt.read_bytes())
    with pytest.raises(ValueError, match="is a checkpoint"):
        claim_file(renamed, "--json", overwrite=True)
    write_atomic(tmp_path / "j.json", b"{}")
    assert (tmp_path / "j.json").read_text() == "{}" and not list(tmp_path.glob(".j.json*"))


# ----------------------------------------------------------------------------- the second probe: smaller ones
def test_ctrl_c_mid_training_still_calibrates_best_and_writes_the_report(run, tmp_path, monkeypatch):
    from defectseg import trainer

    real = trainer.Trainer.train_epoch

    def stop_in_epoch_two(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(trainer.Trainer, "train_epoch", stop_in_epoch_two)
    _ok(_train_args(run, tmp_path, "--name", "stop", "--epochs", "5"))
    report = (tmp_path / "stop" / "report.md").read_text()
    assert "stopped early**: by the user during epoch 2 of 5; best.pt from epoch 1" in report
    assert "threshold" in report and "| defect_iou |" in report  # calibrated, and the test split evaluated


def test_resume_refuses_options_it_would_ignore(run):
    last = run["ckpt"].parent / "last.pt"
    _refused(["train", "--resume", str(last), "--epochs", "9", "--lr", "0.1"], "--epochs, --lr would be ignored")


def test_nan_loss_options_and_a_foreign_split_file_are_named_up_front(run, tmp_path):
    _refused(
        _train_args(run, tmp_path, "--name", "nan", "--set", "train.loss_options.pos_weight=.nan"),
        "train.loss_options.pos_weight is nan",
    )
    split = tmp_path / "mine.json"
    split.write_text(json.dumps({"train": ["a.png", "b.png"], "val": ["c.png"], "test": []}))
    res = _refused(
        _train_args(run, tmp_path, "--name", "foreign", "--split-file", str(split)),
        "3 key(s) name no image",
        "a.png, b.png, c.png",
        "drop --split-file",
    )
    assert "delete split.json" not in res.output


def test_a_red_mask_is_a_defect_under_gt127(tmp_path):
    import numpy as np
    from PIL import Image

    from defectseg.data.io import read_mask

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:4] = (255, 0, 0)  # luma 76: background by gray value, a defect by any reading of a red mark
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert read_mask(tmp_path / "red.png", "gt127").sum() == 4


def test_an_onnx_file_named_pt_and_a_graph_with_other_outputs_are_named(tmp_path):
    import numpy as np
    import onnx

    from defectseg.backends import load_net
    from defectseg.data.io import write_png
    from defectseg.export import ONNX_CONFIG_KEY, export_checkpoint

    ckpt = _save(tmp_path / "m.pt", num_classes=4)  # a 4-class model: 4 output channels
    export_checkpoint(ckpt, tmp_path / "m.onnx")
    (tmp_path / "renamed.pt").write_bytes((tmp_path / "m.onnx").read_bytes())
    write_png(tmp_path / "imgs" / "a.png", np.zeros((32, 32), np.uint8))
    _refused(
        ["predict", "--checkpoint", str(tmp_path / "renamed.pt"), "--out", str(tmp_path / "o"), str(tmp_path / "imgs")],
        "is an ONNX model, not a checkpoint; name it .onnx",
    )
    model = onnx.load(tmp_path / "m.onnx")
    for entry in model.metadata_props:  # claim a binary config for the 4-channel graph
        if entry.key == ONNX_CONFIG_KEY:
            meta = json.loads(entry.value)
            meta["class_names"], meta["num_classes"] = ["background", "defect"], 1
            entry.value = json.dumps(meta)
    onnx.save(model, tmp_path / "lies.onnx")
    with pytest.raises(ValueError, match="gives 4 output channels but its config .* implies 1"):
        load_net(tmp_path / "lies.onnx")
