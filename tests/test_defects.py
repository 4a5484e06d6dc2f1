"""Synthetic defects and copy-paste (data/defects.py): exact masks, only on good images, seeded, on the batch's
device."""

from __future__ import annotations

import pytest
import torch

from defectseg.data.defects import SHAPES, CopyPaste, SyntheticDefects, _blur
from defectseg.data.io import IGNORE_INDEX


def _batch(b: int = 6, h: int = 64, w: int = 80, defective: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.1 * torch.rand((b, 1, h, w), generator=g)
    mask = torch.zeros((b, h, w), dtype=torch.long)
    for i in defective:
        mask[i, 10:20, 30:34] = 1
        mask[i, 40:42, 5:25] = 2
        x[i, :, 10:20, 30:34] = 0.9
    return x, mask


@pytest.mark.parametrize("shape", SHAPES)
def test_synthetic_defect_mask_is_exactly_where_the_image_changed_by_half_its_opacity(shape):
    x, mask = _batch(defective=(0,))
    synth = SyntheticDefects(1.0, seed=3, shapes=(shape,))
    y, m = synth(x, mask)
    assert torch.equal(m[0], mask[0]) and torch.equal(y[0], x[0])  # the defective image is left alone
    for i in range(1, 6):
        new = m[i] == 1
        assert new.any() and set(m[i].unique().tolist()) <= {0, 1}
        # Replay the draws to get this image's blend weight: the mask is where it is >= 1/2.
    replay = SyntheticDefects(1.0, seed=3, shapes=(shape,))
    for _ in range(5):  # the draws that chose images 1-5 (image 0 is not free: no draw)
        replay._u()
    m1 = replay.shape(64, 80, torch.device("cpu"))
    _opacity, sigma = replay._u(0.4, 1.0), replay._u(0.0, 1.5)  # opacity: drawn, not needed here
    weight = _blur(m1, sigma).clamp(0, 1)
    assert torch.equal(m[1] == 1, weight >= 0.5)
    changed = (y[1] - x[1]).abs()[0]
    assert changed[weight == 0].max() == 0  # nothing changes where the defect has no weight


def test_synthetic_defects_are_seeded_and_keep_ignore_pixels():
    x, mask = _batch()
    mask[:, :, :8] = IGNORE_INDEX
    a = SyntheticDefects(0.7, seed=5)(x, mask)
    b = SyntheticDefects(0.7, seed=5)(x, mask)
    c = SyntheticDefects(0.7, seed=6)(x, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert (a[1][:, :, :8] == IGNORE_INDEX).all()
    assert SyntheticDefects(0.0)(x, mask)[1] is mask
    with pytest.raises(ValueError, match="not in"):
        SyntheticDefects(1.5)
    with pytest.raises(ValueError, match="unknown defect shapes"):
        SyntheticDefects(0.5, shapes=("crack",))


def test_copy_paste_pastes_the_source_mask_exactly_with_its_classes():
    x, mask = _batch(defective=(2,))
    y, m = CopyPaste(1.0, seed=1)(x, mask)
    source = mask[2][mask[2] > 0]
    for i in (0, 1, 3, 4, 5):
        pasted = m[i][m[i] > 0]
        assert sorted(pasted.tolist()) == sorted(source.tolist())  # the same pixels, the same classes
        # The pasted bright defect pixels (0.9) are where class 1 was pasted.
        assert torch.allclose(y[i][0][m[i] == 1], torch.tensor(0.9))
    assert torch.equal(m[2], mask[2]) and torch.equal(y[2], x[2])
    nothing = _batch()
    assert CopyPaste(1.0)(*nothing)[1] is nothing[1]  # no defective image in the batch: nothing to paste


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_batch_device():
    x, mask = _batch(defective=(0,))
    y, m = SyntheticDefects(1.0)(x.cuda(), mask.cuda())
    y2, m2 = CopyPaste(1.0)(y, m)
    assert y2.is_cuda and m2.is_cuda


def test_training_with_made_defects_and_on_good_parts_only(tmp_path):
    """The options reach the training step; --defect-free-only trains on good images only and sets the
    threshold on good validation images (val-frr)."""
    from typer.testing import CliRunner

    from defectseg.cli import app
    from defectseg.data.synthetic import write_dagm
    from defectseg.step import TrainStep

    write_dagm(tmp_path / "data", n_per_class=16, size=32, defective_fraction=0.5, seed=1, classes=1)
    seen: list = []
    original = TrainStep.__call__

    def spy(self, images, mask):
        seen.append(([type(f).__name__ for f in self.defects], int((mask > 0).flatten(1).any(1).sum())))
        return original(self, images, mask)

    common = [
        "train",
        "--data",
        str(tmp_path / "data"),
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--model",
        "cheapmix-s",
        "--out-dir",
        str(tmp_path / "runs"),
        "-q",
    ]
    TrainStep.__call__ = spy
    try:
        res = CliRunner().invoke(app, [*common, "--name", "made", "--synthetic-defects", "0.5", "--copy-paste", "0.5"])
        assert res.exit_code == 0, res.output
        assert seen and all(kinds == ["SyntheticDefects", "CopyPaste"] for kinds, _ in seen)
        seen.clear()
        res = CliRunner().invoke(app, [*common, "--name", "good", "--defect-free-only", "--synthetic-defects", "1"])
        assert res.exit_code == 0, res.output
        assert seen and all(n_defective == 0 for _, n_defective in seen)  # no real defect reached the step
    finally:
        TrainStep.__call__ = original
    report = (tmp_path / "runs" / "good" / "report.md").read_text()
    assert "val-frr instead" in report
    cfg = (tmp_path / "runs" / "good" / "config.yaml").read_text()
    assert "defect_free_only: true" in cfg and "synthetic_defects: 1.0" in cfg


def test_defective_images_keeps_a_seeded_subset_of_the_real_defects(tmp_path):
    from defectseg import config as C
    from defectseg.data.synthetic import write_dagm
    from defectseg.trainer import Trainer

    write_dagm(tmp_path / "data", n_per_class=20, size=32, defective_fraction=0.5, seed=1, classes=1)
    chosen = []
    for _ in range(2):
        cfg = C.from_dict(
            {
                "data": {"root": str(tmp_path / "data"), "size": 32, "defective_images": 3},
                "train": {"device": "cpu"},
                "out_dir": str(tmp_path / "runs"),
                "name": f"r{len(chosen)}",
            }
        )
        t = Trainer(cfg, quiet=True)
        samples = t.train_set.samples
        chosen.append(sorted(s.key for s in samples if s.defective))
        assert len(chosen[-1]) == 3 and sum(not s.defective for s in samples) > 3
    assert chosen[0] == chosen[1]  # the same three images for the same seed
