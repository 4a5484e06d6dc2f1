"""Augmentation keeps image and mask aligned; seeded; state resume."""

from __future__ import annotations

import pytest
import torch

from defectseg.data import PRESETS, Augmenter


def blobs(b=6, h=48, w=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        for _ in range(3):
            y, x = torch.randint(4, h - 12, (2,), generator=g).tolist()
            m[i, y : y + 8, x : x + 10] = int(torch.randint(1, 4, (1,), generator=g))
    return m


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_image_and_mask_stay_aligned(preset):
    mask = blobs()
    image = (mask.float() / 3).unsqueeze(1)  # a mask-shaped image
    aug = Augmenter(preset, seed=1, photometric=False)
    for _ in range(3):
        img2, m2 = aug(image, mask)
        assert img2.shape == image.shape and m2.shape == mask.shape and m2.dtype == torch.long
        valid = m2 != 255
        restored = torch.round(img2[:, 0] * 3).long()
        agree = (restored == m2)[valid].float().mean().item()
        assert agree > 0.97, agree  # bilinear image vs nearest mask differ only on a few edge pixels
        assert set(torch.unique(m2).tolist()) <= {0, 1, 2, 3, 255}


def test_flips_and_turns_are_exact():
    mask = blobs(b=16)
    image = mask.float().unsqueeze(1).repeat(1, 3, 1, 1)
    img2, m2 = Augmenter("light", seed=5, photometric=False)(image, mask)
    assert torch.equal(img2[:, 0].long(), m2) and torch.equal(img2[:, 2].long(), m2)
    assert not torch.equal(m2, mask)  # something happened
    # non-square: shape kept
    img3, m3 = Augmenter("light", seed=5, photometric=False)(image[:, :, :, :40], mask[:, :, :40])
    assert m3.shape == (16, 48, 40) and torch.equal(img3[:, 0].long(), m3)


def test_outside_pixels_get_ignore_index():
    mask = torch.zeros(8, 32, 32, dtype=torch.long)
    image = torch.full((8, 1, 32, 32), 0.5)
    aug = Augmenter("strong", seed=0, ignore_index=99)
    seen = False
    for _ in range(4):
        _, m2 = aug(image, mask)
        assert set(torch.unique(m2).tolist()) <= {0, 99}
        seen |= bool((m2 == 99).any())
    assert seen


def test_seeded_and_resumable():
    mask = blobs()
    image = torch.rand(6, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    a, b = Augmenter("strong", seed=3), Augmenter("strong", seed=3)
    for _ in range(2):
        ia, ma = a(image, mask)
        ib, mb = b(image, mask)
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
    state = a.state_dict()
    nxt = a(image, mask)
    c = Augmenter("strong", seed=123)
    c.load_state_dict(state)
    again = c(image, mask)
    assert torch.equal(nxt[0], again[0]) and torch.equal(nxt[1], again[1])
    other = Augmenter("strong", seed=4)(image, mask)
    assert not torch.equal(other[0], ia)


def test_photometric_in_range_and_none_is_identity():
    image = torch.rand(4, 1, 32, 32)
    mask = torch.zeros(4, 32, 32, dtype=torch.long)
    out, m = Augmenter("strong", seed=0, geometric=False)(image, mask)
    assert out.min() >= 0 and out.max() <= 1 and torch.equal(m, mask)
    out, m = Augmenter("none")(image, mask)
    assert out is image and m is mask
    assert set(PRESETS) == {"none", "light", "strong"}
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        Augmenter("wild")
    with pytest.raises(ValueError):
        Augmenter()(image, mask[:, :16])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_gpu_with_same_geometry():
    mask = blobs()
    image = (mask.float() / 3).unsqueeze(1)
    cpu = Augmenter("strong", seed=2, photometric=False)(image, mask)
    gpu = Augmenter("strong", seed=2, photometric=False)(image.cuda(), mask.cuda())
    assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda"
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.99
    out, m = Augmenter("strong", seed=2)(image.cuda(), mask.cuda())
    assert out.is_cuda and m.is_cuda and out.min() >= 0 and out.max() <= 1
