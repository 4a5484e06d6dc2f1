"""Losses: hand-computed tiny cases (incl. all-background masks and ignore pixels), torch equivalences,
finite gradients, and the build_loss registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from defectseg.data import IGNORE_INDEX
from defectseg.losses import (
    LOSSES,
    BCELoss,
    CELoss,
    bce_dice_loss,
    bce_loss,
    build_loss,
    ce_loss,
    dice_loss,
    focal_loss,
    register_loss,
)

LN3 = math.log(3.0)


def one_logit_case() -> tuple[torch.Tensor, torch.Tensor]:
    """1x1x2x2 logits with sigmoids 0.5, 0.75 / 0.25, ~1 and target 1, 0 / 0, ignored.

    The ignored pixel has a confidently wrong-looking logit: it must not change any loss."""
    logits = torch.tensor([[[[0.0, LN3], [-LN3, 10.0]]]])
    target = torch.tensor([[[1, 0], [0, 255]]])
    return logits, target


def three_class_case() -> tuple[torch.Tensor, torch.Tensor]:
    """1x3x1x3 logits: pixel A softmax (1/3, 1/3, 1/3) target 1; pixel B softmax (1/2, 1/4, 1/4) target 0;
    pixel C ignored."""
    logits = torch.tensor([[[[0.0, math.log(2.0), 5.0]], [[0.0, 0.0, -5.0]], [[0.0, 0.0, 9.0]]]])
    target = torch.tensor([[[1, 0, 255]]])
    return logits, target


# ---------------------------------------------------------------------------------------------- BCE


def test_bce_one_logit_by_hand() -> None:
    logits, target = one_logit_case()
    # -log(0.5) for the defect pixel, -log(1 - 0.75) and -log(1 - 0.25) for the background ones, mean over 3.
    expected = (math.log(2) + math.log(4) + math.log(4 / 3)) / 3
    assert bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # pos_weight multiplies the defect pixel's term only.
    expected_pw = (2 * math.log(2) + math.log(4) + math.log(4 / 3)) / 3
    assert bce_loss(logits, target, pos_weight=2.0).item() == pytest.approx(expected_pw, rel=1e-6)


def test_bce_one_logit_equals_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 5, 7, generator=g) * 3
    target = torch.randint(0, 2, (3, 5, 7), generator=g)
    ours = bce_loss(logits, target)
    ref = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    ours_pw = bce_loss(logits, target, pos_weight=4.0)
    ref_pw = F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=torch.tensor(4.0))
    assert ours_pw.item() == pytest.approx(ref_pw.item(), rel=1e-6)
    # A (B, 1, H, W) mask is accepted too.
    assert bce_loss(logits, target.unsqueeze(1)).item() == pytest.approx(ref.item(), rel=1e-6)


def test_bce_multi_logit_is_one_vs_rest() -> None:
    # Pixel A: logits (0, 0), target 1 -> each channel -log 0.5. Pixel B: (ln3, -ln3), target 0 ->
    # channel 0 is positive with p 0.75, channel 1 negative with p 0.25: each -log 0.75. Pixel C ignored.
    logits = torch.tensor([[[[0.0, LN3, -7.0]], [[0.0, -LN3, 7.0]]]])
    target = torch.tensor([[[1, 0, 255]]])
    expected = (2 * math.log(2) + 2 * math.log(4 / 3)) / 4
    assert bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------- Dice


def test_dice_one_logit_by_hand() -> None:
    logits, target = one_logit_case()
    # p = 0.5, 0.75, 0.25; t = 1, 0, 0: Σpt = 0.5, Σp = 1.5, Σt = 1 -> dice (1 + 1) / (2.5 + 1) = 4/7.
    assert dice_loss(logits, target).item() == pytest.approx(3 / 7, rel=1e-6)
    # smooth 0.5: (1 + 0.5) / (2.5 + 0.5) = 1/2.
    assert dice_loss(logits, target, smooth=0.5).item() == pytest.approx(0.5, rel=1e-6)


def test_dice_all_background_is_finite_and_sensible() -> None:
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    # Σt = 0 -> loss = Σp / (Σp + 1); p = 0.5, 0.75, 0.25, 0.5 -> Σp = 2 -> 2/3.
    logits = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]])
    assert dice_loss(logits, target).item() == pytest.approx(2 / 3, rel=1e-6)
    # A confident empty prediction costs (almost) nothing.
    assert dice_loss(torch.full((1, 1, 2, 2), -20.0), target).item() < 1e-7
    # An all-ignored batch gives exactly 0.
    assert dice_loss(logits, torch.full((1, 2, 2), 255)).item() == 0.0


def test_dice_sums_over_the_batch_not_per_image() -> None:
    # Image 1: p (0.5, 0.5), all background. Image 2: p (0.75, 0.25), target (1, 0).
    logits = torch.tensor([[[[0.0, 0.0]]], [[[LN3, -LN3]]]])
    target = torch.tensor([[[0, 0]], [[1, 0]]])
    # Batch sums: Σpt = 0.75, Σp = 2, Σt = 1 -> dice (1.5 + 1) / (3 + 1) = 0.625.
    assert dice_loss(logits, target).item() == pytest.approx(0.375, rel=1e-6)
    # Per image it would have been mean(1 - 1/2, 1 - 2.5/3) = 1/3: make sure that is not what we compute.
    assert dice_loss(logits, target).item() != pytest.approx(1 / 3, rel=1e-3)


def test_dice_softmax_mean_over_foreground_classes() -> None:
    logits, target = three_class_case()
    # Class 1: p (1/3, 1/4), t (1, 0): (2/3 + 1) / (7/12 + 1 + 1) = 20/31.
    # Class 2: p (1/3, 1/4), t (0, 0): 1 / (7/12 + 1) = 12/19. Background (class 0) is not scored.
    expected = 1 - (20 / 31 + 12 / 19) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_bce_dice_is_weighted_sum() -> None:
    logits, target = one_logit_case()
    bce = (math.log(2) + math.log(4) + math.log(4 / 3)) / 3
    assert bce_dice_loss(logits, target).item() == pytest.approx(0.8 * bce + 0.2 * 3 / 7, rel=1e-6)
    assert bce_dice_loss(logits, target, bce_weight=0.5, dice_weight=2.0).item() == pytest.approx(
        0.5 * bce + 2.0 * 3 / 7, rel=1e-6
    )


# ---------------------------------------------------------------------------------------------- CE


def test_ce_weighted_by_hand_and_equals_torch() -> None:
    # Pixel A (0, 0) target 1: -log 0.5. Pixel B (ln3, 0) target 0: -log 0.75. Pixel C ignored.
    logits = torch.tensor([[[[0.0, LN3, 4.0]], [[0.0, 0.0, -4.0]]]])
    target = torch.tensor([[[1, 0, 255]]])
    assert ce_loss(logits, target).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    w = torch.tensor([1.0, 3.0])
    expected = (3 * math.log(2) + 1 * math.log(4 / 3)) / (3 + 1)
    assert ce_loss(logits, target, weight=w).item() == pytest.approx(expected, rel=1e-6)
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert ce_loss(logits, target, weight=w).item() == pytest.approx(ref.item(), rel=1e-6)


def test_ce_one_logit_is_two_class_and_equals_bce() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 4, 6, generator=g) * 2
    target = torch.randint(0, 2, (2, 4, 6), generator=g)
    target[0, 0, :3] = 255
    assert ce_loss(logits, target).item() == pytest.approx(bce_loss(logits, target).item(), rel=1e-5)
    # Weight (background 1, defect 2) against torch's CE on the explicit [0, z] logits.
    w = torch.tensor([1.0, 2.0])
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    ref = F.cross_entropy(two, target, weight=w, ignore_index=255)
    assert ce_loss(logits, target, weight=w).item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="one entry per class"):
        ce_loss(logits, target, weight=torch.ones(3))


# ---------------------------------------------------------------------------------------------- focal


def test_focal_sigmoid_by_hand() -> None:
    logits, target = one_logit_case()
    # p_t = 0.5 (defect, α 0.25), 0.25 (background, α 0.75), 0.75 (background, α 0.75); γ = 2.
    terms = [0.25 * 0.5**2 * math.log(2), 0.75 * 0.75**2 * math.log(4), 0.75 * 0.25**2 * math.log(4 / 3)]
    assert focal_loss(logits, target).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    no_alpha = [0.5**2 * math.log(2), 0.75**2 * math.log(4), 0.25**2 * math.log(4 / 3)]
    assert focal_loss(logits, target, alpha=None).item() == pytest.approx(sum(no_alpha) / 3, rel=1e-6)


def test_focal_softmax_by_hand() -> None:
    logits, target = three_class_case()
    # A: p_t 1/3, defect (α 0.25). B: p_t 1/2, background (1 - α = 0.75).
    terms = [0.25 * (2 / 3) ** 2 * math.log(3), 0.75 * 0.5**2 * math.log(2)]
    assert focal_loss(logits, target).item() == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_focal_reduces_to_bce_ce_and_heads_agree() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 1, 3, 5, generator=g) * 2
    target = torch.randint(0, 2, (2, 3, 5), generator=g)
    target[1, 2, 1:] = 255
    assert focal_loss(z, target, gamma=0.0, alpha=None).item() == pytest.approx(bce_loss(z, target).item(), rel=1e-6)
    multi = torch.randn(2, 4, 3, 5, generator=g)
    t4 = torch.randint(0, 4, (2, 3, 5), generator=g)
    assert focal_loss(multi, t4, gamma=0.0, alpha=None).item() == pytest.approx(ce_loss(multi, t4).item(), rel=1e-6)
    # A 2-logit head [0, z] sees the same focal loss as a 1-logit head z.
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert focal_loss(two, target).item() == pytest.approx(focal_loss(z, target).item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- shared behaviour


def focal_sqrt(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """γ < 1: (1 - p_t)^γ has an infinite slope at p_t = 1, which saturated logits reach."""
    return focal_loss(logits, target, gamma=0.5)


ALL_FUNCS = [bce_loss, dice_loss, bce_dice_loss, ce_loss, focal_loss, focal_sqrt]


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_ignored_pixels_change_nothing(fn, channels: int) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, channels, 4, 4, generator=g)
    target = torch.randint(0, max(channels, 2), (2, 4, 4), generator=g)
    target[:, 0] = 255
    changed = logits.clone()
    changed[:, :, 0] = torch.randn(2, channels, 4, generator=g) * 50  # only ignored rows differ
    assert fn(logits, target).item() == pytest.approx(fn(changed, target).item(), rel=1e-6)
    # The loss equals the loss on the valid rows alone.
    assert fn(logits, target).item() == pytest.approx(fn(logits[:, :, 1:], target[:, 1:]).item(), rel=1e-5)


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_gradients_finite_including_edge_cases(fn, channels: int) -> None:
    g = torch.Generator().manual_seed(4)
    cases = {
        "random": torch.randint(0, max(channels, 2), (2, 4, 4), generator=g),
        "all background": torch.zeros(2, 4, 4, dtype=torch.long),
        "all ignored": torch.full((2, 4, 4), 255),
    }
    for name, target in cases.items():
        # Saturated logits: sigmoid/softmax at 0 or 1 exactly in float32.
        logits = (torch.randn(2, channels, 4, 4, generator=g) * 100).requires_grad_()
        loss = fn(logits, target)
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.isfinite(logits.grad).all(), name
        if name == "all ignored":
            assert loss.item() == 0.0 and not logits.grad.any()
        else:
            assert logits.grad.abs().sum() > 0, name


def test_all_background_losses_by_hand() -> None:
    # Every pixel background with logit 0 (p = 0.5): BCE = CE = ln 2; focal = 0.75 · 0.25 · ln 2.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    assert bce_loss(logits, target).item() == pytest.approx(math.log(2), rel=1e-6)
    assert ce_loss(logits, target).item() == pytest.approx(math.log(2), rel=1e-6)
    assert focal_loss(logits, target).item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)
    assert dice_loss(logits, target).item() == pytest.approx(2 / 3, rel=1e-6)  # Σp = 2


def test_bad_targets_raise() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        bce_loss(logits, torch.tensor([[[0, 1], [2, 0]]]))
    with pytest.raises(ValueError, match="target must be"):
        dice_loss(logits, torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        ce_loss(logits, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="smooth"):
        dice_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long), smooth=0.0)
    # A custom ignore index is honoured, and 255 is then an error.
    target = torch.tensor([[[0, 1], [-1, -1]]])
    assert bce_loss(logits, target, ignore_index=-1).item() == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError):
        bce_loss(logits, torch.tensor([[[0, 1], [255, 0]]]), ignore_index=-1)


# ---------------------------------------------------------------------------------------------- registry


def test_build_loss_matches_functions() -> None:
    logits, target = three_class_case()
    expected = {
        "bce": bce_loss(logits, target),
        "dice": dice_loss(logits, target),
        "bce-dice": bce_dice_loss(logits, target),
        "ce": ce_loss(logits, target),
        "focal": focal_loss(logits, target),
    }
    assert LOSSES == tuple(sorted(expected))
    for name, value in expected.items():
        module = build_loss(name)
        assert isinstance(module, torch.nn.Module)
        assert module(logits, target).item() == pytest.approx(value.item(), rel=1e-6), name
    opts = build_loss("focal", gamma=0.0, alpha=None)(logits, target)
    assert opts.item() == pytest.approx(ce_loss(logits, target).item(), rel=1e-6)
    assert build_loss("bce", pos_weight=2.0)(logits, target).item() == pytest.approx(
        bce_loss(logits, target, pos_weight=2.0).item(), rel=1e-6
    )


def test_build_loss_class_weights_are_buffers() -> None:
    w = torch.tensor([0.5, 2.0, 3.0])
    module = build_loss("ce", class_weights=w)
    assert isinstance(module, CELoss)
    assert "weight" in dict(module.named_buffers()) and "weight" in module.state_dict()
    assert module.to(torch.float64).weight.dtype == torch.float64  # follows .to() like any buffer
    logits, target = three_class_case()
    assert module(logits, target).item() == pytest.approx(ce_loss(logits, target, weight=w).item(), rel=1e-6)
    w[0] = 100.0  # the module keeps its own copy
    assert module.weight[0].item() == 0.5


def test_registry() -> None:
    assert build_loss("bce").ignore_index == IGNORE_INDEX == 255
    with pytest.raises(ValueError, match="already registered"):
        register_loss("bce")(BCELoss)
    assert LOSSES == ("bce", "bce-dice", "ce", "dice", "focal")


def test_build_loss_errors() -> None:
    with pytest.raises(ValueError, match="bce, bce-dice, ce, dice, focal"):
        build_loss("lovasz")
    with pytest.raises(ValueError, match="'ce' loss only"):
        build_loss("dice", class_weights=torch.ones(2))
    with pytest.raises(ValueError, match="bad option"):
        build_loss("bce", gamma=2.0)
    with pytest.raises(ValueError, match="class weights"):
        build_loss("ce", class_weights=torch.tensor([1.0, float("nan")]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_on_cuda_under_bf16_autocast(name: str) -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[:, 0] = 255
    weights = torch.tensor([0.5, 1.0, 2.0]) if name == "ce" else None
    cpu_value = build_loss(name, class_weights=weights)(logits, target)
    module = build_loss(name, class_weights=weights).cuda()
    x = logits.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = module(x.to(torch.bfloat16), target.cuda())
    loss.backward()
    assert loss.dtype == torch.float32  # computed in float32 even under autocast
    assert torch.isfinite(x.grad).all()
    # bf16 logits round to ~3 significant digits; the loss must still agree to that level.
    assert loss.item() == pytest.approx(cpu_value.item(), rel=2e-2)
