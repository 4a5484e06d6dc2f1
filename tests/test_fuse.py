"""Inference rewrites (fuse.py, models/layers.py, CheapNetInference) compute exactly the trained model's function,
and backend "auto" runs a .pt on ONNX Runtime only when the exported graph matches PyTorch."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_infer import _save  # a checkpoint written as training writes one
from torch import nn

from defectseg import backends
from defectseg.bench import run_benchmark
from defectseg.export import OnnxModel, export_onnx
from defectseg.fuse import fuse_for_inference
from defectseg.models import PixelModel, create_model, list_models
from defectseg.models.cheapnet import CheapNetInference
from defectseg.models.layers import fold_batchnorm, subpixel_weight
from defectseg.predictor import Predictor


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong fold cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "k,p,op,groups,cin,cout",
    [(3, 1, 1, 4, 8, 4), (3, 1, 1, 4, 4, 4), (3, 1, 1, 1, 3, 5), (4, 1, 0, 2, 4, 6), (2, 0, 0, 3, 3, 3)],
)
def test_subpixel_weight_is_the_transposed_conv_exactly(k, p, op, groups, cin, cout):
    torch.manual_seed(0)
    t = nn.ConvTranspose2d(cin, cout, k, 2, p, output_padding=op, groups=groups)
    x = torch.randn(2, cin, 7, 9)
    weight, bias = subpixel_weight(t)
    got = F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1, groups=groups), 2)
    torch.testing.assert_close(got, t(x), atol=1e-6, rtol=0)


def test_subpixel_weight_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="stride-2"):
        subpixel_weight(nn.ConvTranspose2d(4, 4, 3, 1, 1))
    with pytest.raises(ValueError, match="stride-2"):
        subpixel_weight(nn.ConvTranspose2d(4, 4, 3, 2, 1))  # no output_padding: output 2H - 1


@pytest.mark.parametrize("transposed,groups", [(False, 1), (False, 4), (True, 4), (True, 1)])
def test_fold_batchnorm_equals_conv_then_bn(transposed, groups):
    torch.manual_seed(0)
    conv = (
        nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1, groups=groups)
        if transposed
        else nn.Conv2d(8, 4, 3, 1, 1, groups=groups, bias=False)
    )
    bn = _randomise_batchnorm(nn.BatchNorm2d(4))
    x = torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        want = bn(conv(x))
        fold_batchnorm(conv, bn)
        torch.testing.assert_close(conv(x), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name,options",
    [(n, {}) for n in list_models("segment")]
    + [("cheapnet-m", {"head": "linear"}), ("cheapnet-s", {"conv": "standard"}), ("cheapmix-s", {"context": True})],
)
def test_fused_model_computes_the_same_function(name, options):
    net = _randomise_batchnorm(create_model(name, in_channels=1, num_classes=2, **options))
    model = PixelModel(net).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    m = model.size_multiple
    x = torch.randint(0, 256, (2, 1, 3 * m, 5 * m)).float()  # not square, not the training size
    with torch.no_grad():
        want, got = model(x), fused(x)
    torch.testing.assert_close(got, want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    if name.startswith(("cheapnet", "cheapmix")):  # their BatchNorms all follow a conv: none is left
        assert not any(isinstance(c, nn.BatchNorm2d) for c in fused.modules())
    if name.startswith("cheapnet"):
        assert isinstance(fused.net, CheapNetInference)


def test_fused_cheapnet_exports_and_matches_in_onnxruntime(tmp_path):
    model = PixelModel(_randomise_batchnorm(create_model("cheapnet-m", in_channels=1, num_classes=1))).eval()
    path = export_onnx(fuse_for_inference(model), tmp_path / "m.onnx", (1, 1, 64, 64))
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 48, 80)).astype(np.float32)  # dynamic axes
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(OnnxModel(path, threads=1)(x), want, atol=1e-4)


# ----------------------------------------------------------------------------- backend "auto"
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("fuse") / "seg.pt", name="cheapnet-m")


def test_auto_backend_runs_a_checkpoint_on_onnxruntime_with_torch_s_results(ckpt):
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (70, 45), dtype=np.uint8), rng.integers(0, 256, (64, 64), dtype=np.uint8)]
    auto = Predictor.from_checkpoint(ckpt, device="cpu")
    eager = Predictor.from_checkpoint(ckpt, device="cpu", backend="torch")
    assert auto.segmenter.backend == "onnxruntime" and "exported to ONNX at load" in auto.segmenter.note
    assert eager.segmenter.backend == "torch" and eager.segmenter.note == ""
    assert auto.segmenter.source == ckpt
    for a, b in zip(auto.predict_arrays(imgs), eager.predict_arrays(imgs)):
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)


def test_auto_backend_falls_back_to_torch_and_says_why(ckpt, monkeypatch):
    monkeypatch.setattr(backends, "AUTO_PARITY", -1.0)  # no graph can match: the parity check must refuse it
    net = backends.load_net(ckpt, device="cpu")
    assert net.backend == "torch" and "differ from PyTorch" in net.note
    monkeypatch.setattr(backends, "AUTO_PARITY", 1e-3)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    net = backends.load_net(ckpt, device="cpu")
    assert net.backend == "torch" and "onnxruntime is not installed" in net.note


def test_benchmark_times_several_backends_in_one_run():
    rows = run_benchmark(
        ["cheapnet-s"],
        size=32,
        device="cpu",
        backend=["torch", "torch-fused", "auto"],
        warmup=0,
        repeats=1,
        min_repeats=1,
        threads=1,
    )
    assert [r["backend"] for r in rows] == ["torch", "torch-fused", "onnxruntime-fused"]
    assert all(r["median_ms"] > 0 for r in rows)
    rows = run_benchmark(
        ["cheapnet-s"], size=32, device="cpu", backend="auto", train=True, warmup=0, repeats=1, min_repeats=1, threads=1
    )
    assert rows[0]["backend"] == "torch" and rows[0]["mode"] == "train"
    with pytest.raises(ValueError, match="--train times the training step"):
        run_benchmark(["cheapnet-s"], size=32, device="cpu", backend="torch-fused", train=True)


def test_openvino_backend_times_the_graph_or_says_it_is_missing(monkeypatch):
    rows = run_benchmark(
        ["cheapnet-s"], size=32, device="cpu", backend="openvino-fused", warmup=0, repeats=1, min_repeats=1, threads=1
    )
    assert rows[0]["backend"] == "openvino-fused"
    assert rows[0]["median_ms"] > 0 if rows[0]["repeats"] else "openvino is not installed" in rows[0]["note"]
    monkeypatch.setitem(sys.modules, "openvino", None)
    rows = run_benchmark(
        ["cheapnet-s"], size=32, device="cpu", backend="openvino-fused", warmup=0, repeats=1, min_repeats=1, threads=1
    )
    assert rows[0]["median_ms"] is None and rows[0]["note"] == "skipped: openvino is not installed"


@pytest.mark.parametrize("name,blocked", [("cheapnet-s", False), ("cheapnet-m", True), ("cheapmix-s", True)])
def test_onnxruntime_uses_the_blocked_layout_only_for_convs_of_8_channels_or_more(tmp_path, name, blocked):
    model = PixelModel(create_model(name)).eval()
    om = OnnxModel(export_onnx(fuse_for_inference(model), tmp_path / "m.onnx", (1, 1, 32, 32)), threads=1)
    assert om.blocked_layout is blocked
    x = np.random.default_rng(0).integers(0, 256, (1, 1, 32, 48)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(om(x), model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_openvino_runs_the_fused_graph_with_pytorch_s_logits(tmp_path):
    ov = pytest.importorskip("openvino")
    model = PixelModel(_randomise_batchnorm(create_model("cheapnet-m"))).eval()
    path = export_onnx(fuse_for_inference(model), tmp_path / "m.onnx", (1, 1, 32, 32))
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(0).integers(0, 256, (1, 1, 48, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(compiled.create_infer_request().infer({0: x})[0], want, atol=1e-4)
