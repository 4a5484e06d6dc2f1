"""Model cost: parameter counts and multiply-accumulates, checked against hand counts and FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from defectseg.bench import count_macs, count_params
from defectseg.models import create_model, list_models, model_task


def _flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Forward FLOPs as PyTorch's own counter sees them (2 per multiply-accumulate)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(shape))
    return counter.get_total_flops()


def test_count_params_all_and_trainable():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    assert count_params(model) == (3 * 4 + 4) + (4 + 4) + (4 * 2 + 2)
    model[0].requires_grad_(False)
    assert count_params(model, trainable_only=True) == (4 + 4) + (4 * 2 + 2)
    assert count_params(model) == 34  # frozen parameters still count by default


# (layer, input shape, MACs counted by hand)
LAYERS = {
    # grouped conv: output 2x12x5x6, each output sums (8/4 input channels) x 3x3 taps
    "grouped conv": (nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4), (2, 8, 9, 11), 2 * 12 * 5 * 6 * 2 * 9),
    # depthwise transposed conv, stride 2, output_padding 1 (CheapNet's decoder1): each of the
    # 2x6x5x7 input elements is multiplied by one 3x3 kernel slice
    "depthwise transposed conv": (
        nn.ConvTranspose2d(6, 6, 3, stride=2, padding=1, output_padding=1, groups=6),
        (2, 6, 5, 7),
        2 * 6 * 5 * 7 * 9,
    ),
    # CheapNet's decoder2..4: 2G -> G with groups=G, one output channel per input pair
    "grouped transposed conv": (
        nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, groups=4),
        (1, 8, 4, 4),
        1 * 8 * 4 * 4 * 1 * 9,
    ),
    "standard transposed conv": (nn.ConvTranspose2d(3, 5, 4, stride=2, padding=1), (1, 3, 6, 6), 3 * 6 * 6 * 5 * 16),
    # linear on a 3-D input: every one of the 3x4x7 outputs sums 5 products
    "linear": (nn.Linear(5, 7), (3, 4, 5), 3 * 4 * 7 * 5),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_single_layer_macs(kind: str):
    layer, shape, expected = LAYERS[kind]
    assert count_macs(layer, shape) == expected
    assert _flops(layer, shape) == 2 * expected


def test_transposed_conv_is_not_counted_over_its_output():
    """Counting a stride-2 transposed conv over its output (as thop does) would over-count it 4x."""
    layer, shape, expected = LAYERS["depthwise transposed conv"]
    out = layer(torch.zeros(shape))
    over_output = out.numel() * (layer.in_channels // layer.groups) * 9
    assert over_output == 4 * expected
    assert count_macs(layer, shape) == expected


@pytest.mark.parametrize("name", list_models())
def test_model_macs_match_flop_counter(name: str):
    model = create_model(name, in_channels=2, num_classes=1 if model_task(name) == "anomaly" else 3)
    m = 8 if model_task(name) == "classify" else model.size_multiple
    shape = (1, 2, m, 2 * m)
    macs = count_macs(model, shape)
    assert macs > 0
    assert _flops(model, shape) == 2 * macs


def _cheapnet_macs(h: int, w: int, g: int, cin: int, ncls: int, conv: str) -> int:
    """CheapNet MACs from DESIGN.md's layer list, by hand (h*w divisible by 256)."""
    c = g if conv == "depthwise" else g * g  # per-pixel cost of one G->G 3x3 (transposed) conv is 9c
    hw = h * w
    enc1 = hw * 9 * cin * g
    downs = 9 * c * (hw // 4 + hw // 16 + hw // 64 + hw // 256)  # counted over their outputs
    dec1 = 9 * c * (hw // 256)  # transposed: counted over its input (the bottleneck)
    dec234 = 18 * c * (hw // 64 + hw // 16 + hw // 4)  # inputs are 2G channels at 1/8, 1/4, 1/2
    out = hw * 2 * g * ncls
    return enc1 + downs + dec1 + dec234 + out


@pytest.mark.parametrize("conv", ["depthwise", "standard"])
@pytest.mark.parametrize("g", [2, 8])
def test_cheapnet_macs_closed_form(g: int, conv: str):
    model = create_model("cheapnet", in_channels=3, num_classes=2, width=g, conv=conv)
    assert count_macs(model, (2, 3, 32, 48)) == 2 * _cheapnet_macs(32, 48, g, 3, 2, conv)


def test_count_macs_leaves_the_model_as_it_was():
    model = create_model("cheapnet-s").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = count_macs(model, (1, 1, 32, 32))
    assert model.training
    assert all(not mod._forward_hooks for mod in model.modules())
    # Eval mode inside: the BatchNorm running statistics are not updated by the count.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert count_macs(model, (1, 1, 32, 32)) == first  # hooks removed: no double counting
    assert count_macs(model, (3, 1, 32, 32)) == 3 * first


def test_count_macs_counts_reused_layers_and_follows_model_dtype():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin(x))

    assert count_macs(Twice(), (2, 4)) == 2 * 2 * 4 * 4
    model = create_model("cheapnet-s")
    assert count_macs(model.to(torch.bfloat16), (1, 1, 32, 32)) == _cheapnet_macs(32, 32, 2, 1, 1, "depthwise")
