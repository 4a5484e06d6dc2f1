"""SegmentationDataset: tensors, resize, cache (and its cap), DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from defectseg.data import SegmentationDataset, infer_channels, load_dataset
from defectseg.data.synthetic import write_dagm


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return write_dagm(tmp_path_factory.mktemp("synth"), n_per_class=7, size=64, classes=2, seed=3)


def test_items_and_collate(synth):
    spec = load_dataset(synth)
    assert len(spec.samples) == 14
    ds = SegmentationDataset(spec.samples, num_classes=spec.num_classes)
    item = ds[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (1, 64, 64)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (64, 64)
    assert item["index"] == 0
    assert sum(int(ds[i]["mask"].max()) for i in range(len(ds))) == 2  # 1 in 7 defective, 2 classes
    ds3 = SegmentationDataset(spec.samples, channels=3, size=(32, 48))
    it = ds3[1]
    assert it["image"].shape == (3, 32, 48) and it["mask"].shape == (32, 48)
    assert torch.equal(it["image"][0], it["image"][2])
    batch = next(iter(DataLoader(ds3, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 48) and batch["mask"].shape == (4, 32, 48)
    assert ds.meta(0)["key"] == spec.samples[0].key


def test_mask_resized_with_nearest(tmp_path):
    root = tmp_path / "g"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(root / "images" / "a.png")
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 1
    m[0, 0] = 3
    Image.fromarray(m).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("bg\na\nb\nc\n")
    spec = load_dataset(root)
    ds = SegmentationDataset(spec.samples, size=(20, 20), num_classes=4)
    mask = ds[0]["mask"].numpy()
    assert set(np.unique(mask)) <= {0, 1, 3}  # no interpolated values
    assert mask[5:15, 5:15].all()


def test_cache_no_disk_reads_after_first_epoch(synth):
    spec = load_dataset(synth)
    ds = SegmentationDataset(spec.samples, size=(32, 32))
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert ds.disk_reads == len(ds) and ds.cached == len(ds)
    capped = SegmentationDataset(spec.samples, size=(32, 32), cache_bytes=5 * 2 * 32 * 32)
    for _ in range(2):
        for i in range(len(capped)):
            capped[i]
    assert capped.cached == 5 and capped.disk_reads == len(capped) + (len(capped) - 5)
    off = SegmentationDataset(spec.samples, cache=False)
    off[0], off[0]
    assert off.disk_reads == 2 and off.cached == 0


def test_preload_then_workers(synth):
    spec = load_dataset(synth)
    ds = SegmentationDataset(spec.samples, size=(32, 32)).preload(threads=2)
    assert ds.cached == len(ds) and ds.disk_reads == len(ds)
    ref = torch.cat([b["image"] for b in DataLoader(ds, batch_size=5, num_workers=0)])
    got = torch.cat([b["image"] for b in DataLoader(ds, batch_size=5, num_workers=2)])
    assert torch.equal(ref, got)
    # without preload, workers still work (each has its own cache)
    fresh = SegmentationDataset(spec.samples, size=(32, 32))
    got = torch.cat([b["image"] for b in DataLoader(fresh, batch_size=5, num_workers=2)])
    assert torch.equal(ref, got)


def test_infer_channels(tmp_path):
    root = tmp_path / "g"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    gray = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    Image.fromarray(np.dstack([gray] * 3)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "a.png")
    spec = load_dataset(root)
    assert infer_channels(spec.samples) == 1
    Image.fromarray(np.dstack([gray, 255 - gray, gray])).save(root / "images" / "a.png")
    assert infer_channels(spec.samples) == 3


def test_bad_channels():
    with pytest.raises(ValueError):
        SegmentationDataset([], channels=2)


def test_reference_file_for_every_sample(tmp_path):
    """Reference mode with a file (not "group"): every sample gets that image, resized or as read."""
    from defectseg.data import group_references
    from defectseg.data.io import write_png

    ref = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    write_png(tmp_path / "ref.png", ref)
    from defectseg.data import Sample

    samples = [Sample(tmp_path / "a.png", None), Sample(tmp_path / "b.png", None)]
    as_read = group_references(samples, [], None, 1, tmp_path / "ref.png")
    assert len(as_read) == 2 and np.array_equal(as_read[0], ref)
    assert group_references(samples, [], (6, 5), 1, str(tmp_path / "ref.png"))[1].shape == (6, 5)
