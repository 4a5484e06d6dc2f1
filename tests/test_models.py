"""Model zoo: registry, shapes, gradients, pinned parameter counts, checkpoint layouts, size errors.

The reference tables here (torchvision's MobileNetV2 / VGG16 / ResNet18 key layouts, timm's MobileNetV2
names, the authors' CheapNet module) are written from the upstream sources and DESIGN.md, not from
`defectseg.models`, so a drift in the implementation shows up as a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from defectseg.bench import count_params
from defectseg.models import create_model, list_models, load_checkpoint_state, load_encoder_weights, model_task

# Parameter counts at in_channels=1, num_classes=1. Checked by hand from the layer lists in DESIGN.md
# (e.g. the classic U-Net: 18,846,016 encoder + 2,786,240 up-convs + 9,404,160 decoder + 65 head) and,
# for the pretrained encoders, against the torchvision counts pinned in the encoder tests below.
PINNED_PARAMS = {
    "cheapnet": 4_387,  # default width 32
    "cheapnet-s": 277,
    "cheapnet-m": 4_387,
    "cheapnet-l": 140_291,
    "cheapmix": 17_665,  # default width 32; 12*G^2 + 168*G + 1 (test_cheapmix_parameter_formula)
    "cheapmix-s": 5_761,
    "cheapmix-m": 17_665,
    "cheapmix-l": 59_905,
    "mobile-unet": 4_403_689,
    "unet": 31_036_481,
    "unet-small": 1_940_817,
    "unet-vgg16": 18_948_737,
    "unet-resnet18": 14_235_009,
    "unet-mobilenetv1": 3_873_857,
    "classifier-vgg": 1_172_897,
    "classifier-mobilenetv2": 2_224_577,
    # EfficientNet-Lite0 without its classifier head, one-channel stem (2,958,272) + decoder 96-16 (513,169)
    "unet-lite0": 3_471_441,
    "patchcore-lite0": 700_192,  # the encoder up to block 10, frozen
}

# Two (H, W) sizes per model, valid for its size multiple and small enough for a 2-core CI machine
# (the classic U-Net and CheapNet-L are the heavy ones). Rectangular on purpose: H and W are separate.
SIZES = {
    "cheapnet": [(32, 48), (64, 64)],
    "cheapnet-s": [(16, 16), (64, 48)],
    "cheapnet-m": [(32, 48), (64, 64)],
    "cheapnet-l": [(16, 16), (32, 48)],
    "cheapmix": [(32, 48), (64, 64)],
    "cheapmix-s": [(16, 16), (64, 48)],
    "cheapmix-m": [(32, 48), (64, 64)],
    "cheapmix-l": [(16, 32), (48, 32)],
    "mobile-unet": [(32, 64), (64, 96)],
    "unet": [(16, 32), (32, 32)],
    "unet-small": [(16, 48), (64, 64)],
    "unet-vgg16": [(32, 64), (64, 32)],
    "unet-resnet18": [(32, 64), (64, 96)],
    "unet-mobilenetv1": [(32, 64), (64, 96)],
    "classifier-vgg": [(8, 8), (33, 47)],
    "classifier-mobilenetv2": [(7, 9), (64, 48)],
    "unet-lite0": [(32, 64), (64, 96)],
    "patchcore-lite0": [(32, 64), (64, 96)],
}

SEGMENTERS = list_models("segment")
CLASSIFIERS = list_models("classify")
ANOMALY = list_models("anomaly")  # fitted without a gradient step, run as one-logit segmenters


def test_registry_lists_every_model_once_with_a_pinned_count_and_sizes():
    names = list_models()
    assert len(names) == len(set(names))
    # A new model must come with a pinned parameter count and shape-test sizes.
    assert set(names) == set(PINNED_PARAMS) == set(SIZES)
    assert set(SEGMENTERS) | set(CLASSIFIERS) | set(ANOMALY) == set(names) and ANOMALY == ["patchcore-lite0"]
    assert not set(SEGMENTERS) & set(CLASSIFIERS)
    assert set(CLASSIFIERS) == {"classifier-vgg", "classifier-mobilenetv2"}
    assert model_task("cheapnet-s") == "segment" and model_task("classifier-vgg") == "classify"


def test_unknown_model_and_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="cheapnet-s"):  # the message lists the valid names
        create_model("cheapnet-xl")
    with pytest.raises(ValueError, match="unknown model"):
        model_task("nope")
    with pytest.raises(ValueError, match="mobile-unet"):
        create_model("mobile-unet", downsamples=3)  # Mobile-UNet has no such option
    with pytest.raises(ValueError, match="depthwise"):
        create_model("cheapnet", conv="dilated")
    with pytest.raises(ValueError, match="width"):
        create_model("cheapnet", width=0)
    for name in ("unet", "unet-small", "unet-vgg16", "unet-resnet18", "unet-mobilenetv1"):
        with pytest.raises(ValueError, match="downsamples"):
            create_model(name, downsamples=0)
        with pytest.raises(ValueError, match="downsamples"):
            create_model(name, downsamples=6)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("which", [0, 1])
def test_output_shape(name: str, which: int):
    """Logits (B, N, H, W) for segmenters, (B, N) for classifiers, at two sizes and channel counts."""
    torch.manual_seed(0)
    h, w = SIZES[name][which]
    cin, ncls = (1, 1) if which == 0 or name in ANOMALY else (3, 4)
    model = create_model(name, in_channels=cin, num_classes=ncls).eval()
    with torch.no_grad():
        out = model(torch.randn(2, cin, h, w))
    expected = (2, ncls) if model_task(name) == "classify" else (2, ncls, h, w)
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if model_task(name) != "classify":
        assert h % model.size_multiple == 0 and w % model.size_multiple == 0


@pytest.mark.parametrize("name", list_models())
def test_backward_reaches_every_parameter(name: str):
    """Train mode, batch 2: every parameter takes part in the loss (no dead branch, no NaN); an anomaly model has
    none to train."""
    torch.manual_seed(0)
    h, w = SIZES[name][0]
    model = create_model(name).train()
    if name in ANOMALY:
        assert not any(p.requires_grad for p in model.parameters())
        return
    out = model(torch.randn(2, 1, h, w))
    # A random weighting, not out.sum(): a sum through a final train-mode BatchNorm has ~zero gradient.
    (out * torch.randn_like(out)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    not_finite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"{name}: no gradient reaches {no_grad}"
    assert not not_finite, f"{name}: non-finite gradient in {not_finite}"
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.parametrize("name", list_models())
def test_pinned_parameter_count(name: str):
    with torch.device("meta"):  # counting needs no memory or init time
        model = create_model(name, in_channels=1, num_classes=1)
    assert count_params(model) == PINNED_PARAMS[name]


# ----------------------------------------------------------------------------- CheapNet

WIDTHS = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


@pytest.mark.parametrize("g", WIDTHS)
def test_cheapnet_parameter_formulas(g: int):
    with torch.device("meta"):  # the standard G=1024 net has 104M parameters: no real memory needed
        depthwise = create_model("cheapnet", width=g, conv="depthwise")
        standard = create_model("cheapnet", width=g, conv="standard")
    assert count_params(depthwise) == 137 * g + 3
    assert count_params(standard) == 99 * g * g + 38 * g + 3


def test_cheapnet_variants_and_design_numbers():
    # The literal numbers of DESIGN.md (guards the formulas themselves against a typo).
    expected = {
        ("cheapnet-s", "depthwise"): 277,
        ("cheapnet-m", "depthwise"): 4387,
        ("cheapnet-l", "depthwise"): 140291,
        ("cheapnet-s", "standard"): 475,
        ("cheapnet-m", "standard"): 102595,
    }
    for (name, conv), n in expected.items():
        with torch.device("meta"):
            model = create_model(name, conv=conv)
        assert count_params(model) == n, (name, conv)
    assert [create_model(n).width for n in ("cheapnet-s", "cheapnet-m", "cheapnet-l")] == [2, 32, 1024]
    # More classes / input channels change only the first and last convs.
    with torch.device("meta"):
        assert count_params(create_model("cheapnet", in_channels=3, num_classes=4, width=8)) == (
            137 * 8 + 3 + 2 * 9 * 8 + 3 * (2 * 8 + 3)
        )


class AuthorsCheapNet(nn.Module):
    """CheapNet written from DESIGN.md with the authors' module names (independent of defectseg)."""

    def __init__(self, in_channels: int, num_classes: int, g: int, groups: int, swap_concat: bool = False):
        super().__init__()

        def block(conv: nn.Module, c: int) -> nn.Sequential:
            return nn.Sequential(conv, nn.BatchNorm2d(c), nn.LeakyReLU(0.2))

        def down() -> nn.Sequential:
            return block(nn.Conv2d(g, g, 3, stride=2, padding=1, groups=groups), g)

        def up(cin: int) -> nn.Sequential:
            return block(nn.ConvTranspose2d(cin, g, 3, stride=2, padding=1, output_padding=1, groups=groups), g)

        self.encoder1 = block(nn.Conv2d(in_channels, g, 3, stride=1, padding=1), g)
        self.encoder2, self.encoder3, self.encoder4, self.bottleneck = down(), down(), down(), down()
        self.decoder1, self.decoder2, self.decoder3, self.decoder4 = up(g), up(2 * g), up(2 * g), up(2 * g)
        self.output = block(nn.Conv2d(2 * g, num_classes, 1), num_classes)
        self.swap = swap_concat  # only to prove the comparison can tell the concat orders apart

    def cat(self, skip: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        return torch.cat([upsampled, skip] if self.swap else [skip, upsampled], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.encoder1(x)
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        d1 = self.decoder1(self.bottleneck(e4))
        d2 = self.decoder2(self.cat(e4, d1))
        d3 = self.decoder3(self.cat(e3, d2))
        d4 = self.decoder4(self.cat(e2, d3))
        return self.output(self.cat(e1, d4))


def _randomize(module: nn.Module) -> None:
    """Random weights and BatchNorm statistics, so that eval-mode outputs depend on every tensor."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0.0, 0.5)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.3)


@pytest.mark.parametrize("conv", ["depthwise", "standard"])
def test_cheapnet_loads_authors_checkpoint_and_matches_their_forward(tmp_path: Path, conv: str):
    torch.manual_seed(0)
    g = 4
    ref = AuthorsCheapNet(3, 2, g, groups=g if conv == "depthwise" else 1).eval()
    _randomize(ref)
    path = tmp_path / "cheapnet_authors.pth"
    torch.save({"CheapNet": ref.state_dict()}, path)

    model = create_model("cheapnet", in_channels=3, num_classes=2, width=g, conv=conv)
    model.load_state_dict(load_checkpoint_state(path), strict=True)
    model.eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected, got = ref(x), model(x)
        swapped = AuthorsCheapNet(3, 2, g, groups=g if conv == "depthwise" else 1, swap_concat=True).eval()
        swapped.load_state_dict(ref.state_dict())
        wrong = swapped(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if conv == "depthwise":  # with groups=G the concat order decides which channels are mixed
        assert not torch.allclose(wrong, expected, atol=1e-3)

    # A bare state dict loads too.
    torch.save(ref.state_dict(), tmp_path / "bare.pth")
    assert set(load_checkpoint_state(tmp_path / "bare.pth")) == set(ref.state_dict())


def test_load_checkpoint_state_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint_state(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_checkpoint_state(tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_checkpoint_state(tmp_path / "list.pth")


# ----------------------------------------------------------------------------- size errors


def test_cheapnet_bad_size_names_nearest_valid_size():
    model = create_model("cheapnet-s").eval()
    with pytest.raises(ValueError, match="96x96"):
        model(torch.zeros(1, 1, 100, 100))
    with pytest.raises(ValueError, match="96x64"):
        model(torch.zeros(1, 1, 100, 70))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(1, 64, 64))


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_bad_size_is_value_error(name: str):
    model = create_model(name, **({"width": 2} if name.startswith("cheapnet") else {})).eval()
    m = model.size_multiple
    assert m >= 2
    # 3m+1 rounds down to 3m, 2m-1 up to 2m.
    with pytest.raises(ValueError, match=f"{3 * m}x{2 * m}"):
        model(torch.zeros(1, 1, 3 * m + 1, 2 * m - 1))
    with pytest.raises(ValueError, match=name):  # the message names the model the user chose
        model(torch.zeros(1, 1, m + 1, m))


def test_classifier_too_small_is_value_error():
    model = create_model("classifier-vgg").eval()
    with pytest.raises(ValueError, match="8x8"):
        model(torch.zeros(1, 1, 4, 7))
    with pytest.raises(ValueError, match="4-D"):
        create_model("classifier-mobilenetv2").eval()(torch.zeros(1, 32, 32))


# ----------------------------------------------------------------------------- Mobile-UNet and MobileNetV2

MNV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _bn_keys(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}
    keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def torchvision_mobilenet_v2_features(in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's `mobilenet_v2().features` state dict, from its source."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, cout: int, cin_per_group: int, k: int) -> None:
        keys[f"{prefix}.0.weight"] = (cout, cin_per_group, k, k)
        keys.update(_bn_keys(f"{prefix}.1", cout))

    conv_bn("features.0", 32, in_channels, 3)
    cin, i = 32, 1
    for t, c, n, _ in MNV2_SETTINGS:
        for _ in range(n):
            hidden, p, j = cin * t, f"features.{i}.conv", 0
            if t != 1:
                conv_bn(f"{p}.0", hidden, cin, 1)
                j = 1
            conv_bn(f"{p}.{j}", hidden, 1, 3)
            keys[f"{p}.{j + 1}.weight"] = (c, hidden, 1, 1)
            keys.update(_bn_keys(f"{p}.{j + 2}", c))
            cin, i = c, i + 1
    conv_bn(f"features.{i}", 1280, cin, 1)
    return keys


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=gen) + 0.5
        else:
            state[k] = torch.randn(s, generator=gen) * 0.1
    return state


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_mobilenetv2_encoder_keys_match_torchvision():
    with torch.device("meta"):
        model = create_model("mobile-unet", in_channels=3)
    own = _shapes(model.encoder)
    assert own == torchvision_mobilenet_v2_features(3)
    assert len(own) == 312
    assert count_params(model.encoder) == 2_223_872  # torchvision mobilenet_v2 `features`
    for key, shape in {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
    }.items():
        assert own[key] == shape, key
    # The classifier shares the same encoder (same keys, so the same pretrained file loads into both).
    with torch.device("meta"):
        clf = create_model("classifier-mobilenetv2", in_channels=3)
    assert _shapes(clf.encoder) == own


def test_mobile_unet_taps_and_decoder_shapes():
    torch.manual_seed(0)
    model = create_model("mobile-unet", in_channels=3, num_classes=5).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        taps = model.encoder(x)
        outs = model.decode(taps)
        logits = model(x)
        feats = model.encoder.features
        # Taps are torchvision's features[0:2], [2:4], [4:7], [7:14], [14:19].
        for tap, end in zip(taps, (2, 4, 7, 14, 19)):
            torch.testing.assert_close(tap, feats[:end](x))
        # Wiring of DESIGN.md: ConvT(k4, s2, p1), add the tap, InvertedResidual; ConvT to full size.
        torch.testing.assert_close(outs[0], model.ups[0](taps[4]) + taps[3])
        torch.testing.assert_close(outs[1], model.blocks[0](outs[0]))
        torch.testing.assert_close(outs[2], model.ups[1](outs[1]) + taps[2])
        torch.testing.assert_close(outs[8], model.head(outs[7]))
    assert [tuple(t.shape[1:]) for t in taps] == [
        (16, 128, 128),
        (24, 64, 64),
        (32, 32, 32),
        (96, 16, 16),
        (1280, 8, 8),
    ]
    assert [tuple(t.shape[1:]) for t in outs[:8]] == [
        (96, 16, 16),
        (96, 16, 16),
        (32, 32, 32),
        (32, 32, 32),
        (24, 64, 64),
        (24, 64, 64),
        (16, 128, 128),
        (16, 128, 128),
    ]
    assert tuple(outs[8].shape) == (1, 5, 256, 256)
    torch.testing.assert_close(logits, outs[8])
    up = model.ups[0]
    assert (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))
    assert tuple(model.blocks[0].conv[0][0].weight.shape) == (576, 96, 1, 1)  # IR(96, t=6)


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_mobilenetv2_torchvision_weights_load(tmp_path: Path):
    shapes = torchvision_mobilenet_v2_features(3)
    state = _random_state(shapes)
    full = {**state, "classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.randn(1000)}
    path = _save(full, tmp_path / "mobilenet_v2_tv.pth")

    rgb = create_model("mobile-unet", in_channels=3)
    loaded = load_encoder_weights(rgb, path)
    assert set(loaded) == set(shapes)  # the ImageNet head is ignored
    for k, v in rgb.encoder.state_dict().items():
        assert torch.equal(v, state[k]), k

    gray = create_model("mobile-unet", in_channels=1)
    load_encoder_weights(gray, path)
    torch.testing.assert_close(
        gray.encoder.state_dict()["features.0.0.weight"], state["features.0.0.weight"].sum(1, keepdim=True)
    )
    # Summing the stem over RGB makes a gray image respond like the RGB image with equal channels.
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(gray.encoder.eval()(x), rgb.encoder.eval()(x.repeat(1, 3, 1, 1))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    clf = create_model("classifier-mobilenetv2", in_channels=3)
    load_encoder_weights(clf, path)
    assert torch.equal(clf.encoder.state_dict()["features.18.0.weight"], state["features.18.0.weight"])


def torchvision_to_timm_mobilenetv2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision MobileNetV2 keys to timm's `mobilenetv2_100` names (the inverse of the loader's map)."""
    stage_of: dict[int, tuple[int, int]] = {}
    i = 1
    for s, (_, _, n, _) in enumerate(MNV2_SETTINGS):
        for b in range(n):
            stage_of[i] = (s, b)
            i += 1
    first = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
    rest = {
        "conv.0.0": "conv_pw",
        "conv.0.1": "bn1",
        "conv.1.0": "conv_dw",
        "conv.1.1": "bn2",
        "conv.2": "conv_pwl",
        "conv.3": "bn3",
    }
    top = {
        "features.0.0": "conv_stem",
        "features.0.1": "bn1",
        "features.18.0": "conv_head",
        "features.18.1": "bn2",
        "classifier.1": "classifier",
    }
    out = {}
    for key, v in state.items():
        *mod, leaf = key.split(".")
        mod = ".".join(mod)
        if mod in top:
            out[f"{top[mod]}.{leaf}"] = v
            continue
        _, idx, rest_of_key = mod.split(".", 2)
        s, b = stage_of[int(idx)]
        out[f"blocks.{s}.{b}.{(first if s == 0 else rest)[rest_of_key]}.{leaf}"] = v
    return out


def test_mobilenetv2_timm_weights_load_like_torchvision(tmp_path: Path):
    state = _random_state(torchvision_mobilenet_v2_features(3), seed=1)
    full = {**state, "classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.randn(1000)}
    timm_state = torchvision_to_timm_mobilenetv2(full)
    assert "conv_stem.weight" in timm_state and "blocks.0.0.conv_dw.weight" in timm_state
    assert "blocks.1.0.conv_pw.weight" in timm_state and "blocks.6.0.conv_pwl.weight" in timm_state
    assert len(timm_state) == len(full)

    from_tv = create_model("mobile-unet", in_channels=1)
    from_timm = create_model("mobile-unet", in_channels=1)
    load_encoder_weights(from_tv, _save(full, tmp_path / "tv.pth"))
    load_encoder_weights(from_timm, _save(timm_state, tmp_path / "timm.pth"))
    a, b = from_tv.encoder.state_dict(), from_timm.encoder.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_encoder_weights_errors(tmp_path: Path):
    state = _random_state(torchvision_mobilenet_v2_features(3))
    model = create_model("mobile-unet")

    missing = dict(state)
    del missing["features.5.conv.1.0.weight"]
    with pytest.raises(ValueError, match=r"features\.5\.conv\.1\.0\.weight"):
        load_encoder_weights(model, _save(missing, tmp_path / "missing.pth"))

    for extra in ("features.3.conv.9.weight", "features.19.0.weight", "head.weight"):
        with pytest.raises(ValueError, match=extra.replace(".", r"\.")):
            load_encoder_weights(model, _save({**state, extra: torch.zeros(3)}, tmp_path / "extra.pth"))

    wrong = {**state, "features.1.conv.1.weight": torch.zeros(8, 32, 1, 1)}
    with pytest.raises(ValueError, match="shape"):
        load_encoder_weights(model, _save(wrong, tmp_path / "wrong.pth"))

    with pytest.raises(ValueError, match="encoder"):
        load_encoder_weights(create_model("cheapnet-s"), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="does not exist"):
        load_encoder_weights(model, tmp_path / "nowhere.pth")


# ----------------------------------------------------------------------------- U-Net encoders

VGG16_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    17: (512, 256),
    19: (512, 512),
    21: (512, 512),
    24: (512, 512),
    26: (512, 512),
    28: (512, 512),
}


def torchvision_vgg16_features(in_channels: int = 3, last: int = 28) -> dict[str, tuple[int, ...]]:
    keys = {}
    for i, (cout, cin) in VGG16_CONVS.items():
        if i <= last:
            keys[f"features.{i}.weight"] = (cout, in_channels if i == 0 else cin, 3, 3)
            keys[f"features.{i}.bias"] = (cout,)
    return keys


def torchvision_resnet18_no_fc(in_channels: int = 3, stages: int = 4) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, in_channels, 7, 7), **_bn_keys("bn1", 64)}
    cin = 64
    for layer, cout in enumerate((64, 128, 256, 512)[:stages], start=1):
        for b in (0, 1):
            p = f"layer{layer}.{b}"
            keys[f"{p}.conv1.weight"] = (cout, cin if b == 0 else cout, 3, 3)
            keys.update(_bn_keys(f"{p}.bn1", cout))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            keys.update(_bn_keys(f"{p}.bn2", cout))
            if b == 0 and cin != cout:
                keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                keys.update(_bn_keys(f"{p}.downsample.1", cout))
        cin = cout
    return keys


def test_vgg16_and_resnet18_encoders_match_torchvision():
    with torch.device("meta"):
        vgg = create_model("unet-vgg16", in_channels=3)
        res = create_model("unet-resnet18", in_channels=3)
        vgg1 = create_model("unet-vgg16", in_channels=1)
        res1 = create_model("unet-resnet18", in_channels=1)
    assert _shapes(vgg.encoder) == torchvision_vgg16_features(3)
    assert count_params(vgg.encoder) == 14_714_688  # torchvision vgg16 `features`
    assert _shapes(res.encoder) == torchvision_resnet18_no_fc(3)
    assert count_params(res.encoder) == 11_176_512  # torchvision resnet18 without `fc`
    # Replaced first conv for other input channel counts.
    assert _shapes(vgg1.encoder) == torchvision_vgg16_features(1)
    assert _shapes(res1.encoder) == torchvision_resnet18_no_fc(1)


# (name, reference table of the full pretrained encoder, head keys of a full ImageNet checkpoint)
PRETRAINED = {
    # Head shapes are shrunk (the real classifier.0 is 4096x25088): the loader drops heads by name.
    "unet-vgg16": (torchvision_vgg16_features, {"classifier.0.weight": (40, 250), "classifier.6.bias": (10,)}),
    "unet-resnet18": (torchvision_resnet18_no_fc, {"fc.weight": (1000, 512), "fc.bias": (1000,)}),
}


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_unet_encoder_weights_load_full_and_truncated(tmp_path: Path, name: str):
    table, head = PRETRAINED[name]
    state = _random_state({**table(3), **head})
    path = _save(state, tmp_path / f"{name}.pth")

    model = create_model(name, in_channels=1)
    loaded = load_encoder_weights(model, path)
    assert set(loaded) == set(table(3))
    stem = model.encoder.stem_key
    for k, v in model.encoder.state_dict().items():
        expected = state[k].sum(1, keepdim=True) if k == stem else state[k]
        torch.testing.assert_close(v, expected, msg=k)

    # downsamples=3: the encoder stops at stride 8 and the deeper pretrained stages are ignored.
    short = create_model(name, in_channels=1, downsamples=3)
    assert short.size_multiple == 8
    loaded = load_encoder_weights(short, path)
    own = short.encoder.state_dict()
    assert set(loaded) == set(own) and len(own) < len(table(3))
    for k, v in own.items():
        if k != stem:
            assert torch.equal(v, state[k]), k
    with torch.no_grad():
        assert tuple(short.eval()(torch.zeros(1, 1, 24, 40)).shape) == (1, 1, 24, 40)

    # A key missing from the middle of the file is still an error in a truncated encoder.
    first = sorted(own)[0]
    with pytest.raises(ValueError, match=first.replace(".", r"\.")):
        load_encoder_weights(short, _save({k: v for k, v in state.items() if k != first}, tmp_path / "m.pth"))


def test_vgg16_bn_file_is_rejected_with_its_foreign_keys(tmp_path: Path):
    """vgg16_bn numbers its layers differently: the error names the BatchNorm keys plain VGG16 lacks."""
    state = {
        "features.0.weight": torch.zeros(64, 3, 3, 3),
        "features.0.bias": torch.zeros(64),
        "features.1.weight": torch.zeros(64),
        "features.1.bias": torch.zeros(64),
    }
    for model in (create_model("unet-vgg16"), create_model("unet-vgg16", downsamples=2)):
        with pytest.raises(ValueError, match=r"features\.1\.weight"):
            load_encoder_weights(model, _save(state, tmp_path / "vgg16_bn.pth"))


def test_mobilenetv1_encoder_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    src = create_model("unet-mobilenetv1", in_channels=3)
    _randomize(src.encoder)
    state = src.encoder.state_dict()
    dst = create_model("unet-mobilenetv1", in_channels=1, downsamples=4)
    load_encoder_weights(dst, _save(state, tmp_path / "mnv1.pth"))
    for k, v in dst.encoder.state_dict().items():
        expected = state[k].sum(1, keepdim=True) if k == dst.encoder.stem_key else state[k]
        torch.testing.assert_close(v, expected, msg=k)
    # Width 16: stem 16 channels, deepest stage 512 (half of MobileNetV1's 32 / 1024).
    assert tuple(state["features.0.0.weight"].shape) == (16, 3, 3, 3)
    assert src.encoder.channels == [0, 32, 64, 128, 256, 512]


@pytest.mark.parametrize("name", ["unet", "unet-small", "unet-vgg16", "unet-resnet18", "unet-mobilenetv1"])
def test_fewer_downsamples(name: str):
    full = create_model(name, in_channels=3, num_classes=2)
    short = create_model(name, in_channels=3, num_classes=2, downsamples=2)
    assert short.size_multiple == 4 and full.size_multiple in (16, 32)
    assert count_params(short) < count_params(full)
    with torch.no_grad():
        out = short.eval()(torch.randn(1, 3, 12, 20))  # a multiple of 4 only
    assert tuple(out.shape) == (1, 2, 12, 20)
    with pytest.raises(ValueError, match="12x20"):
        short(torch.randn(1, 3, 13, 19))


def test_mobilenetv2_blocks_residuals_and_activations_follow_torchvision():
    """Residual only where torchvision has one (stride 1, same channels), ReLU6 after every non-linear conv."""
    torch.manual_seed(0)
    encoder = create_model("mobile-unet").encoder.eval()
    feats = encoder.features
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        x = feats[0](x)
        for i in range(1, 18):
            block = feats[i]
            # Zero the last BatchNorm: the block's branch gives 0, so what is left is the shortcut.
            block.conv[-1].weight.zero_()
            block.conv[-1].bias.zero_()
            y = block(x)
            residual = i in {3, 5, 6, 8, 9, 10, 12, 13, 15, 16}  # repeats after each stage's first block
            if residual:
                torch.testing.assert_close(y, x)
            else:
                assert not y.abs().any(), f"features.{i} should have no shortcut"
            x = torch.randn_like(y)
    acts = [m for m in encoder.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU))]
    assert len(acts) == 1 + 1 + 16 * 2 + 1 and all(isinstance(a, nn.ReLU6) for a in acts)


# ----------------------------------------------------------------------------- CheapMix


def _cheapmix_params(g: int, cin: int = 1, ncls: int = 1, blocks: int = 1) -> int:
    """From the layer list: stem 3x3 conv (no bias) + BN; every separable block is dw 3x3 + BN + pw 1x1 + BN
    (no conv biases), G^2 + 13G; 4 stages of (1 + blocks) such blocks, 4 decoder blocks; biased 1x1 head."""
    separable = g * g + 13 * g
    return 9 * cin * g + 2 * g + 4 * (1 + blocks) * separable + 4 * separable + ncls * (g + 1)


@pytest.mark.parametrize("g", [1, 2, 8, 16, 32, 64, 128, 256])
def test_cheapmix_parameter_formula(g: int):
    with torch.device("meta"):
        model = create_model("cheapmix", width=g)
    assert count_params(model) == 12 * g * g + 168 * g + 1 == _cheapmix_params(g)


def test_cheapmix_variants_options_and_general_count():
    assert {n: create_model(n).width for n in ("cheapmix-s", "cheapmix-m", "cheapmix-l")} == {
        "cheapmix-s": 16,
        "cheapmix-m": 32,
        "cheapmix-l": 64,
    }
    assert [12 * g * g + 168 * g + 1 for g in (16, 32, 64)] == [5_761, 17_665, 59_905]
    with torch.device("meta"):
        for blocks in (0, 1, 2, 3):
            model = create_model("cheapmix", in_channels=3, num_classes=4, width=8, blocks=blocks)
            assert model.blocks == blocks
            assert count_params(model) == _cheapmix_params(8, cin=3, ncls=4, blocks=blocks)
        assert count_params(create_model("cheapmix-s", blocks=0)) == 8 * 16 * 16 + 116 * 16 + 1
        assert count_params(create_model("cheapmix-m", context=True)) == 17_665 + 32 * 32 + 32
    for bad in ({"width": 0}, {"width": -3}, {"blocks": -1}, {"blocks": 1.5}, {"context": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_model("cheapmix", **bad)
    with pytest.raises(ValueError, match="cheapmix"):
        create_model("cheapmix", conv="standard")  # CheapNet's option, not CheapMix's


def test_cheapmix_layers_follow_the_design():
    model = create_model("cheapmix", in_channels=3, num_classes=2, width=8, blocks=2)
    assert model.size_multiple == 16
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.LeakyReLU)) for m in model.modules())
    # Constant width: every conv but the stem reads G channels and every conv but the head writes G.
    assert convs[0] is model.stem[0] and tuple(convs[0].weight.shape) == (8, 3, 3, 3) and convs[0].groups == 1
    assert convs[-1] is model.head and tuple(model.head.weight.shape) == (2, 8, 1, 1)
    assert model.head.bias is not None and all(c.bias is None for c in convs[:-1])
    for c in convs[1:-1]:
        assert c.in_channels == c.out_channels == 8
        assert (c.kernel_size, c.groups) in {((3, 3), 8), ((1, 1), 1)}  # depthwise 3x3 or pointwise 1x1
    strided = [c for c in convs if c.stride != (1, 1)]
    assert len(strided) == 4 and all(c.stride == (2, 2) and c.groups == 8 for c in strided)
    assert [len(stage) for stage in model.stages] == [3, 3, 3, 3]  # downsampling block + 2 residual blocks
    # The encoder (what freezing acts on) is the stem and the stages, nothing of the decoder or head.
    enc = {id(p) for p in model.encoder.parameters()}
    assert enc == {id(p) for m in (model.stem, *model.stages) for p in m.parameters()}
    assert not enc & {id(p) for m in (model.decoder, model.head) for p in m.parameters()}


def test_cheapmix_context_reaches_every_pixel():
    """With context=True a change in one corner of the input changes the output in the far corner (beyond the
    convolutions' receptive field); without it, it does not."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 256, 256)
    y = x.clone()
    y[..., :16, :16] += 5.0
    for context, changes in ((False, False), (True, True)):
        model = create_model("cheapmix-s", context=context).eval()
        with torch.no_grad():
            far = (model(x) - model(y))[..., -16:, -16:].abs().max().item()
        assert (far > 0) == changes, (context, far)  # random init: small but nonzero through the context


def test_cheapmix_forward_matches_a_hand_written_reference():
    """Wiring: stem, 4 stages, then per level bilinear x2 + ADD the skip + separable block; linear head."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = create_model("cheapmix", in_channels=2, num_classes=3, width=4).eval()
    _randomize(model)
    x = torch.randn(2, 2, 32, 48)
    with torch.no_grad():
        e = [model.stem(x)]
        for stage in model.stages:
            e.append(stage(e[-1]))
        assert [tuple(t.shape[-2:]) for t in e] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
        d = e[4]
        for i, skip in enumerate((e[3], e[2], e[1], e[0])):
            d = model.decoder[i](F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False) + skip)
        expected = F.conv2d(d, model.head.weight, model.head.bias)  # logits: no BN, no activation after
        torch.testing.assert_close(model(x), expected)
        # Zero-weight head: the logits are the bias everywhere (a prior set there is what the model starts from).
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-4.0, 0.5, 2.0]))
        torch.testing.assert_close(model(x), model.head.bias.view(1, 3, 1, 1).expand(2, 3, 32, 48))


def test_cheapmix_residual_block_is_relu_of_input_plus_branch():
    torch.manual_seed(0)
    model = create_model("cheapmix", width=4).eval()
    block = model.stages[0][1]
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        branch = block.body(x)
        torch.testing.assert_close(block(x), torch.relu(x + branch))
        assert (branch < 0).any()  # no ReLU at the end of the branch: it can subtract from the input
        block.body[-1][1].weight.zero_()  # the branch's last BatchNorm gives its bias (0): identity + ReLU
        torch.testing.assert_close(block(x), torch.relu(x))


def test_cheapmix_bad_size_names_nearest_valid_size():
    model = create_model("cheapmix-s").eval()
    with pytest.raises(ValueError, match="cheapmix-s.*96x64"):
        model(torch.zeros(1, 1, 100, 70))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(1, 64, 64))


def test_cheapmix_macs_closed_form():
    """MACs by hand (the bilinear upsampling and the additions have none); matches FlopCounterMode too."""
    from torch.utils.flop_counter import FlopCounterMode

    from defectseg.bench import count_macs

    g, cin, ncls, blocks, h, w = 8, 3, 2, 2, 32, 48
    hw = h * w
    per_block = 9 * g + g * g  # depthwise 3x3 + pointwise 1x1 per output pixel
    stem = hw * 9 * cin * g
    stages = sum((1 + blocks) * per_block * hw // 4**i for i in (1, 2, 3, 4))
    decoder = sum(per_block * hw // 4**i for i in (3, 2, 1, 0))
    head = hw * g * ncls
    model = create_model("cheapmix", in_channels=cin, num_classes=ncls, width=g, blocks=blocks)
    expected = 2 * (stem + stages + decoder + head)  # batch 2
    assert count_macs(model, (2, cin, h, w)) == expected
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(2, cin, h, w))
    assert counter.get_total_flops() == 2 * expected
