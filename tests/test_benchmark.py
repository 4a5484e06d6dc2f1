"""`defectseg benchmark`: figures are measured and consistent, tables parse, bad input fails with exit code 2.

Tiny inputs (32x32, one thread, few repetitions): these tests check the mechanics, not the speed.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectseg import bench
from defectseg.bench import (
    BenchSetting,
    ModelSpec,
    ablation_specs,
    bench_header,
    count_macs,
    count_params,
    format_table,
    load_results,
    plot_throughput,
    run_benchmark,
    time_inference,
    time_training,
    timing,
    validate_setting,
)
from defectseg.cli import app
from defectseg.models import create_model
from defectseg.runtime import cpu_bf16

FAST = dict(warmup=1, repeats=4, max_seconds=5.0, min_repeats=2)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Two models, batches 1 and 3, one benchmark call shared by several tests."""
    return run_benchmark(
        ["cheapnet-s", "cheapnet-m"],
        size=32,
        channels=1,
        device="cpu",
        batches=(1, 3),
        dtypes=("fp32",),
        threads=1,
        **FAST,
    )


def test_rows_have_sane_figures(rows):
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("cheapnet-s", 1),
        ("cheapnet-s", 3),
        ("cheapnet-m", 1),
        ("cheapnet-m", 3),
    ]
    for r in rows:
        assert set(r) == set(bench.COLUMNS)
        assert 0 < r["median_ms"] <= r["p95_ms"]
        assert r["mean_ms"] > 0 and 2 <= r["repeats"] <= 4
        # throughput is the batch over the median per-batch time, not an independent figure
        assert r["img_per_s"] == pytest.approx(r["batch"] / (r["median_ms"] / 1e3), rel=1e-9)
        assert r["peak_mem_mb"] > 10  # a whole Python process with torch loaded
        assert r["threads"] == 1 and r["device"] == "cpu" and r["mode"] == "infer"
        model = create_model(r["model"])
        assert r["params"] == count_params(model)
        assert r["macs"] == count_macs(model, (1, 1, 32, 32))
    assert rows[0]["params"] == 137 * 2 + 3 and rows[2]["params"] == 137 * 32 + 3
    assert torch.get_num_threads() == 1  # restored (conftest sets one thread)


def test_time_inference_statistics_match_the_samples(monkeypatch):
    """mean/median/p95 are computed from the timed calls: replace the clock-driven loop by known samples."""
    samples = [0.004, 0.001, 0.002, 0.003, 0.010]
    monkeypatch.setattr(timing, "_timed", lambda *a, **k: list(samples))
    out = time_inference(create_model("cheapnet-s"), (2, 1, 32, 32), "cpu")
    assert out["median_ms"] == pytest.approx(3.0)
    assert out["mean_ms"] == pytest.approx(4.0)
    assert out["p95_ms"] == pytest.approx(np.percentile(samples, 95) * 1e3)
    assert out["img_per_s"] == pytest.approx(2 / 0.003)


def test_timed_loop_counts_warmup_and_repeats():
    calls = []
    times = timing._timed(lambda: calls.append(1), torch.device("cpu"), warmup=3, repeats=7, max_seconds=60)
    assert len(calls) == 10 and len(times) == 7 and all(t >= 0 for t in times)
    # the time budget stops repeating, but not before min_repeats
    times = timing._timed(lambda: None, torch.device("cpu"), warmup=0, repeats=1000, max_seconds=1e-9, min_repeats=3)
    assert len(times) == 3


def test_macs_scaling_shortcut_is_exact():
    model = create_model("cheapnet-m")
    assert bench.macs_per_image(model, 1, 256) == count_macs(model, (1, 1, 256, 256))
    clf = create_model("classifier-mobilenetv2")  # linear head: MACs not quadratic in size, counted directly
    assert bench.macs_per_image(clf, 1, 256) == count_macs(clf, (1, 1, 256, 256))


def test_formats_parse_and_carry_the_header(rows):
    header = bench_header("cpu", "defectseg benchmark --size 32", threads=1)
    for key in ("device", "torch", "onnxruntime", "numpy", "python", "command", "threads", "peak memory"):
        assert header[key]
    assert header["torch"] == torch.__version__
    data = json.loads(format_table(rows, "json", header))
    assert data["header"]["command"] == "defectseg benchmark --size 32"
    assert [r["median_ms"] for r in data["rows"]] == [r["median_ms"] for r in rows]
    text = format_table(rows, "csv", header)
    assert "# device: " in text and "# command: defectseg benchmark --size 32" in text
    parsed = list(csv.DictReader(io.StringIO("\n".join(l for l in text.splitlines() if not l.startswith("#")))))
    assert list(parsed[0]) == list(bench.COLUMNS) and len(parsed) == len(rows)
    assert float(parsed[1]["img_per_s"]) == pytest.approx(rows[1]["img_per_s"])
    md = format_table(rows, "md", header)
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table) == 2 + len(rows) and "median ms" in table[0] and "p95 ms" in table[0]
    assert f"- torch: {torch.__version__}" in md
    with pytest.raises(ValueError, match="md, csv or json"):
        format_table(rows, "xml", header)


def test_ablation_rows_for_both_conv_kinds():
    specs = ablation_specs(widths=(2, 4), convs=("depthwise", "standard"))
    out = run_benchmark(specs, size=32, batches=(1,), threads=1, **FAST)
    by_label = {r["model"]: r for r in out}
    for g in (2, 4):
        assert by_label[f"cheapnet-G{g}-depthwise"]["params"] == 137 * g + 3
        assert by_label[f"cheapnet-G{g}-standard"]["params"] == 99 * g * g + 38 * g + 3
        assert by_label[f"cheapnet-G{g}-standard"]["macs"] > by_label[f"cheapnet-G{g}-depthwise"]["macs"]
    assert all(r["median_ms"] > 0 for r in out)
    with pytest.raises(ValueError, match="conv kind"):
        ablation_specs(convs=("dilated",))


def test_training_mode_runs_and_updates_weights():
    model = create_model("cheapnet-s")
    before = [p.detach().clone() for p in model.parameters()]
    out = time_training(model, (2, 1, 32, 32), "cpu", **FAST)
    assert 0 < out["median_ms"] <= out["p95_ms"]
    assert out["img_per_s"] == pytest.approx(2 / (out["median_ms"] / 1e3))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # Adam stepped
    rows = run_benchmark(["cheapnet-s"], size=32, batches=(2,), train=True, threads=1, **FAST)
    assert rows[0]["mode"] == "train" and rows[0]["img_per_s"] > 0


def test_training_mode_times_a_classifier_on_its_image_label():
    # a classifier's logits are (B, 1): the step scores the image label with BCE, as the trainer does
    rows = run_benchmark(["classifier-vgg"], size=32, batches=(2,), train=True, threads=1, **FAST)
    assert rows[0]["img_per_s"] > 0 and "+ bce +" in rows[0]["note"]


def test_onnxruntime_backend_runs():
    out = run_benchmark(["cheapnet-s"], size=32, batches=(1, 2), backend="onnxruntime", threads=1, **FAST)
    assert [r["backend"] for r in out] == ["onnxruntime"] * 2
    assert all(0 < r["median_ms"] <= r["p95_ms"] for r in out)
    assert out[0]["params"] == 277


@pytest.mark.skipif(not cpu_bf16(), reason="this CPU runs bf16 in oneDNN's reference code: the benchmark refuses it")
def test_channels_last_and_bf16_on_cpu():
    out = run_benchmark(["cheapnet-s"], size=32, batches=(1,), dtypes=("bf16",), channels_last=True, threads=1, **FAST)
    assert out[0]["channels_last"] is True and out[0]["dtype"] == "bf16" and out[0]["median_ms"] > 0


def test_plot_against_macs_and_accuracy(rows, tmp_path):
    png = plot_throughput(rows, tmp_path / "macs.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = tmp_path / "results.csv"
    results.write_text("model,mIoU\ncheapnet-s,0.61\ncheapnet-m,0.74\n")
    assert load_results(results) == ({"cheapnet-s": 0.61, "cheapnet-m": 0.74}, "mIoU")
    png = plot_throughput(rows, tmp_path / "acc.png", results=results)
    assert png.stat().st_size > 1000
    as_json = tmp_path / "results.json"
    as_json.write_text(json.dumps({"cheapnet-s": {"accuracy": 0.9}, "cheapnet-m": {"accuracy": 0.95}}))
    assert load_results(as_json)[0] == {"cheapnet-s": 0.9, "cheapnet-m": 0.95}
    bad = tmp_path / "bad.csv"
    bad.write_text("model,loss\ncheapnet-s,0.1\n")
    with pytest.raises(ValueError, match="no accuracy column"):
        load_results(bad)


def test_validation_errors():
    with pytest.raises(ValueError, match="unknown dtype"):
        validate_setting(BenchSetting(device="cpu", dtype="fp8"), [1])
    with pytest.raises(ValueError, match="needs --device cuda"):
        validate_setting(BenchSetting(device="cpu", cuda_graphs=True), [1])
    with pytest.raises(ValueError, match="torch backend only"):
        validate_setting(BenchSetting(device="cpu", backend="onnxruntime", channels_last=True), [1])
    with pytest.raises(ValueError, match="multiple of 32"):
        run_benchmark(["mobile-unet"], size=48, threads=1, **FAST)
    with pytest.raises(ValueError, match="unknown model"):
        run_benchmark([ModelSpec("x", "no-such-net")], size=32, **FAST)


def test_dtype_probe_reports_unsupported_dtype(monkeypatch):
    """A (device, dtype) the backend cannot run fails before timing with a message naming the fix."""

    def broken(*args, **kwargs):
        raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")

    monkeypatch.setattr(torch.nn.Conv2d, "forward", broken)
    with pytest.raises(ValueError, match="fp16 is not supported on cpu.*--dtype fp32"):
        validate_setting(BenchSetting(device="cpu", dtype="fp16"), [1])


runner = CliRunner()
TINY = ["benchmark", "--size", "32", "--device", "cpu", "--threads", "1", "--warmup", "1", "--repeats", "3", "-q"]


def test_cli_json_and_plot(tmp_path):
    out = tmp_path / "table.json"
    result = runner.invoke(
        app,
        TINY
        + [
            "--models",
            "cheapnet-s",
            "--batch",
            "1,2",
            "--format",
            "json",
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "p.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["header"]["command"].startswith("defectseg benchmark --models cheapnet-s --size 32")
    assert "--batch 1,2" in data["header"]["command"] and "--format json" in data["header"]["command"]
    assert [r["batch"] for r in data["rows"]] == [1, 2]
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_ablation_subset():
    result = runner.invoke(app, TINY + ["--ablation", "cheapnet", "--widths", "2", "--format", "csv"])
    assert result.exit_code == 0, result.output
    body = [l for l in result.stdout.splitlines() if l and not l.startswith("#")]
    rows = list(csv.DictReader(body))
    assert {(r["model"], int(r["params"])) for r in rows} == {
        ("cheapnet-G2-depthwise", 277),
        ("cheapnet-G2-standard", 475),
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "no-such-net"], "unknown model"),
        (["--models", "cheapnet-s", "--dtype", "fp8"], "unknown dtype"),
        (["--models", "cheapnet-s", "--cuda-graphs"], "needs --device cuda"),
        (["--models", "cheapnet-s", "--batch", "one"], "comma-separated integers"),
        (["--models", "cheapnet-s", "--format", "xml"], "md, csv or json"),
        (["--models", "cheapnet-s", "--backend", "onnxruntime", "--dtype", "bf16"], "float32"),
        (["--ablation", "resnet"], "only sweep is 'cheapnet'"),
    ],
)
def test_cli_bad_input_exits_2(args, message):
    result = runner.invoke(app, TINY + args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cli_cuda_without_gpu_exits_2():
    result = runner.invoke(app, ["benchmark", "--models", "cheapnet-s", "--size", "32", "--device", "cuda"])
    assert result.exit_code == 2
    assert "CUDA is not available" in " ".join(result.output.split())


# ---------------------------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_gpu_events_graphs_and_memory():
    rows = run_benchmark(
        ["cheapnet-s"], size=64, device="cuda", batches=(1, 4), dtypes=("fp32", "bf16"), cuda_graphs=True, **FAST
    )
    assert len(rows) == 4
    for r in rows:
        assert 0 < r["median_ms"] <= r["p95_ms"] and r["peak_mem_mb"] > 0
        assert r["mem_source"] == "torch.cuda.max_memory_allocated" and r["note"] == "CUDA graph replay"


@pytest.mark.gpu
@gpu
def test_gpu_training_channels_last():
    rows = run_benchmark(
        ["cheapnet-m"], size=64, device="cuda", batches=(4,), dtypes=("bf16",), train=True, channels_last=True, **FAST
    )
    assert rows[0]["img_per_s"] > 0 and rows[0]["peak_mem_mb"] > 0
