"""Real datasets in ../shared/data (skipped when absent). Counts come from the listing; a few files are decoded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from defectseg.data import detect_format, load_dataset, load_pair, load_split, make_split, select
from defectseg.data.cli import app

SHARED = Path(os.environ.get("DEFECTSEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
pytestmark = [pytest.mark.realdata, pytest.mark.skipif(not SHARED.is_dir(), reason=f"no real data at {SHARED}")]


def need(name: str) -> Path:
    p = SHARED / name
    if not p.is_dir():
        pytest.skip(f"{p} missing")
    return p


def test_magnetic_tile():
    root = need("magnetic-tile")
    assert detect_format(root) == "magnetic-tile"
    spec = load_dataset(root)
    assert len(spec.samples) == 1344
    assert sum(1 for s in spec.samples if s.defective is False) == 952
    counts = {g: sum(1 for s in spec.samples if s.group == g) for g in {s.group for s in spec.samples}}
    assert counts == {
        "MT_Blowhole": 115,
        "MT_Break": 85,
        "MT_Crack": 57,
        "MT_Fray": 32,
        "MT_Uneven": 103,
        "MT_Free": 952,
    }
    split_file = root / "split-70-15-15.json"
    if split_file.is_file():
        split = load_split(split_file)
        assert [len(split[k]) for k in ("train", "val", "test")] == [940, 202, 202]
        assert len(select(spec, split["test"])) == 202  # keys match the reference split's paths
    mine = make_split(spec, seed=0)
    assert [len(mine[k]) for k in ("train", "val", "test")] == [940, 202, 202]
    crack = next(s for s in spec.samples if s.group == "MT_Crack")
    image, mask = load_pair(crack, 1, 2)
    assert image.shape == mask.shape and mask.max() == 1


def test_neu_seg():
    root = need("neu-seg")
    assert detect_format(root) == "neu-seg"
    spec = load_dataset(root)
    n = {k: sum(1 for s in spec.samples if s.split == k) for k in ("train", "val", "test")}
    assert n == {"train": 3129, "val": 894, "test": 447}
    assert spec.class_names == ["background", "inclusion", "patches", "scratches"]
    split = make_split(spec, seed=0)  # the dataset's own split is kept
    assert [len(split[k]) for k in ("train", "val", "test")] == [3129, 894, 447]
    seen = set()
    for s in spec.samples[::150]:
        image, mask = load_pair(s, 1, 4)
        assert image.shape == (200, 200)
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3}


def test_dagm_samples():
    root = need("dagm-samples")
    assert detect_format(root) == "dagm"
    spec = load_dataset(root)
    assert len(spec.samples) == 10 and all(s.defective for s in spec.samples)
    for s in spec.samples:
        image, mask = load_pair(s, 1, 2)
        assert image.shape == (512, 512) and mask.any()


def test_stats_cli_runs_on_dagm_samples():
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["stats", str(need("dagm-samples")), "--json"])
    assert r.exit_code == 0, r.output
    assert '"defective": 10' in r.output
