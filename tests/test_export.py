"""ONNX export: PyTorch/ONNX Runtime parity for every registered model at two sizes with dynamic axes,
metadata round trip, atomic writes, and clear errors for missing, truncated or foreign files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import defectseg.data.io as data_io
from defectseg.export import OnnxModel, export_onnx, read_onnx_metadata
from defectseg.models import create_model, list_models, model_task


def _channels(name: str) -> int:
    return 3 if name == "mobile-unet" else 1


def _sizes(name: str) -> list[tuple[int, int]]:
    # cheapnet-l is 1024 channels wide at full resolution: keep it tiny. Every other model runs at multiples
    # of 32 (its deepest downsampling), two different heights so a fixed-shape graph would fail.
    return [(32, 32), (48, 32)] if name == "cheapnet-l" else [(64, 64), (96, 64)]


def _randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a graph that drops BN or uses batch statistics differs from PyTorch."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _model(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    if model_task(name) == "anomaly":  # a memory bank to compare with (built empty, every score 0)
        options = {"bank_size": 50, **options}
    model = create_model(name, in_channels=_channels(name), **options)
    _randomise_batchnorm(model)
    if model_task(name) == "anomaly":  # and a calibration, so its logits are of order 1 as a fitted model's are
        model.eval().set_bank(torch.randn(50, model.dim))
        with torch.no_grad():
            raw = model(torch.randn(1, _channels(name), 64, 64))
        model.set_calibration(float(raw.mean()), float(raw.std()))
    return model.eval()


@pytest.mark.parametrize("name", list_models())
def test_onnx_matches_pytorch_at_two_sizes(name: str, tmp_path: Path) -> None:
    model = _model(name)
    cin = _channels(name)
    h0, w0 = _sizes(name)[0]
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_shape=(1, cin, h0, w0), dynamic=True)
    runner = OnnxModel(path, threads=2)
    assert runner.input_channels == cin
    rng = np.random.default_rng(0)
    for h, w in _sizes(name):
        x = rng.standard_normal((2, cin, h, w), dtype=np.float32)  # batch 2: the graph was traced at batch 1
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = runner(x)
        assert got.shape == expected.shape
        assert got.dtype == np.float32
        assert np.abs(expected).max() > 1e-3, "degenerate reference output: parity would prove nothing"
        assert np.abs(got - expected).max() <= 1e-4, (name, h, w, float(np.abs(got - expected).max()))


def test_dynamo_exporter_matches_pytorch(tmp_path: Path) -> None:
    model = _model("cheapnet-s")
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 1, 32, 32), exporter="dynamo")
    runner = OnnxModel(path)
    assert onnx.load(str(path)).opset_import[0].version >= 18  # the dynamo exporter has nothing below 18
    for h, w in [(32, 32), (64, 48)]:
        x = np.random.default_rng(1).standard_normal((2, 1, h, w), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert np.abs(runner(x) - expected).max() <= 1e-4


def test_graph_io_names_and_opset(tmp_path: Path) -> None:
    path = export_onnx(_model("cheapnet-s"), tmp_path / "m.onnx", input_shape=(1, 1, 32, 32), opset=17)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]
    classifier = export_onnx(_model("classifier-vgg"), tmp_path / "c.onnx", input_shape=(1, 1, 32, 32))
    dims = onnx.load(str(classifier)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1]


def test_metadata_round_trip(tmp_path: Path) -> None:
    config = {"model": {"name": "cheapnet-s", "options": {"width": 2}}, "data": {"mean": [0.5], "std": [0.25]}}
    meta = {"defectseg_config": json.dumps(config), "note": "ünïcode ok"}
    path = export_onnx(_model("cheapnet-s"), tmp_path / "m.onnx", input_shape=(1, 1, 32, 32), metadata=meta)
    read = read_onnx_metadata(path)
    assert json.loads(read["defectseg_config"]) == config
    assert read["note"] == "ünïcode ok"
    assert read["defectseg_model"] == "cheapnet-s"
    assert read["defectseg_size_multiple"] == "16"
    assert OnnxModel(path).metadata == read


def test_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="json.dumps"):
        export_onnx(
            _model("cheapnet-s"),
            tmp_path / "m.onnx",
            input_shape=(1, 1, 32, 32),
            metadata={"defectseg_config": {"not": "serialised"}},
        )  # type: ignore[dict-item]
    assert not (tmp_path / "m.onnx").exists()


def test_input_channels_of_a_three_channel_model(tmp_path: Path) -> None:
    model = create_model("cheapnet-s", in_channels=3).eval()
    runner = OnnxModel(export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 32, 32)))
    assert runner.input_channels == 3
    with pytest.raises(ValueError, match="channels = 3"):
        runner(np.zeros((1, 1, 32, 32), np.float32))


def test_bad_input_shape_is_a_value_error(tmp_path: Path) -> None:
    model = _model("cheapnet-s")
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 1, 40, 32))
    with pytest.raises(ValueError, match="four positive integers"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 32, 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot export cheapnet-s with input_shape"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))  # a 1-channel model
    assert list(tmp_path.iterdir()) == []


def test_caller_model_is_left_as_it_was(tmp_path: Path) -> None:
    model = create_model("cheapnet-s").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 1, 32, 32))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched by the trace


def test_static_export_rejects_other_shapes(tmp_path: Path) -> None:
    model = _model("cheapnet-s")
    runner = OnnxModel(export_onnx(model, tmp_path / "m.onnx", input_shape=(2, 1, 32, 48), dynamic=False))
    assert runner.input_shape == [2, 1, 32, 48]
    x = np.random.default_rng(2).standard_normal((2, 1, 32, 48), dtype=np.float32)
    with torch.no_grad():
        assert np.abs(runner(x) - model(torch.from_numpy(x)).numpy()).max() <= 1e-4
    with pytest.raises(ValueError, match="dynamic axes"):
        runner(np.zeros((1, 1, 32, 48), np.float32))


def test_atomic_write_leaves_only_the_target(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "model.onnx"
    export_onnx(_model("cheapnet-s"), out, input_shape=(1, 1, 32, 32))
    export_onnx(_model("cheapnet-m"), out, input_shape=(1, 1, 32, 32))  # overwrite in place
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    assert read_onnx_metadata(out)["defectseg_model"] == "cheapnet-m"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any other file, not private to us


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    export_onnx(_model("cheapnet-s"), out, input_shape=(1, 1, 32, 32))
    old = out.read_bytes()

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(data_io.os, "replace", fail_replace)  # the one atomic write export goes through
    with pytest.raises(ValueError, match="cannot write .*disk full"):  # a one-line error for the CLI
        export_onnx(_model("cheapnet-m"), out, input_shape=(1, 1, 32, 32))
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_unreadable_file_is_a_value_error(damage: str, tmp_path: Path) -> None:
    good = export_onnx(_model("cheapnet-s"), tmp_path / "good.onnx", input_shape=(1, 1, 32, 32))
    bad = tmp_path / "bad.onnx"
    if damage == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"this is a PNG, honestly\x89\x00\xff" * 10)
    elif damage == "empty":
        bad.write_bytes(b"")
    for load in (OnnxModel, read_onnx_metadata):
        with pytest.raises(ValueError, match="defectseg export") as info:
            load(bad)
        assert str(bad) in str(info.value)


def test_call_rejects_wrong_arrays(tmp_path: Path) -> None:
    runner = OnnxModel(export_onnx(_model("cheapnet-s"), tmp_path / "m.onnx", input_shape=(1, 1, 32, 32)))
    with pytest.raises(ValueError, match="float or uint8 input"):
        runner(np.zeros((1, 1, 32, 32), np.int32))
    # uint8 pixels are cast to float32 (a graph from export_checkpoint takes raw pixel values)
    pixels = np.random.default_rng(2).integers(0, 256, (1, 1, 32, 32), dtype=np.uint8)
    assert np.array_equal(runner(pixels), runner(pixels.astype(np.float32)))
    with pytest.raises(ValueError, match="4-D"):
        runner(np.zeros((1, 32, 32), np.float32))
    # float64 is accepted and cast, matching the float32 result
    x = np.random.default_rng(3).standard_normal((1, 1, 32, 32))
    assert np.array_equal(runner(x), runner(x.astype(np.float32)))


def test_providers_and_threads(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = export_onnx(_model("cheapnet-s"), tmp_path / "m.onnx", input_shape=(1, 1, 32, 32))
    assert OnnxModel(path).providers == ["CPUExecutionProvider"]
    # CUDA is asked for first; without it (CPU-only onnxruntime) the CPU provider still runs the model.
    runner = OnnxModel(path, providers=["cuda", "cpu"], threads=3)
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert runner.providers[0] == ("CUDAExecutionProvider" if has_cuda else "CPUExecutionProvider")
    assert runner.providers[-1] == "CPUExecutionProvider"
    assert runner.session.get_session_options().intra_op_num_threads == 3
    default = OnnxModel(path).session.get_session_options().intra_op_num_threads
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default == usable
    with pytest.raises(ValueError, match="unknown ONNX Runtime provider"):
        OnnxModel(path, providers=["GPUExecutionThing"])
    with pytest.raises(ValueError, match="threads"):
        OnnxModel(path, threads=0)
