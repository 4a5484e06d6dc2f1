"""`defectseg data synth` and `defectseg data stats` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from defectseg.data.cli import app

runner = CliRunner()


def test_synth_then_stats(tmp_path):
    out = tmp_path / "synth"
    r = runner.invoke(
        app, ["synth", "--out", str(out), "--n-per-class", "7", "--size", "64", "--seed", "2", "--classes", "2"]
    )
    assert r.exit_code == 0, r.output
    assert "wrote 14 images" in r.output
    assert (out / "Class2" / "Test" / "Label" / "Labels.txt").is_file()
    r = runner.invoke(app, ["stats", str(out)])
    assert r.exit_code == 0, r.output
    for word in ("images", "14", "dagm", "median-freq", "background", "defect", "mean / std"):
        assert word in r.output, word
    r = runner.invoke(app, ["stats", str(out), "--json", "--format", "dagm"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["images"] == 14 and st["defective"] == 2 and len(st["median_frequency_weights"]) == 2


def test_stats_errors_and_skip_bad(tmp_path):
    r = runner.invoke(app, ["stats", str(tmp_path)])
    assert r.exit_code == 1 and "Looked for" in r.output
    root = tmp_path / "g"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n in ("a", "b"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / f"{n}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{n}.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "c.png")  # no mask
    (root / "images" / "b.png").write_bytes(b"broken")
    r = runner.invoke(app, ["stats", str(root)])
    assert r.exit_code == 1 and "c.png" in r.output and "allow-unlabeled" in r.output
    r = runner.invoke(app, ["stats", str(root), "--skip-bad", "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["images"] == 1 and sorted(p.rsplit("/", 1)[-1] for p, _ in st["skipped"]) == ["b.png", "c.png"]
    r = runner.invoke(app, ["stats", str(root), "--skip-bad"])
    assert r.exit_code == 0 and "skipped 2 bad sample" in r.output
