"""Timing one setting: the forward pass on PyTorch, ONNX Runtime or OpenVINO, or the training step, with peak memory.

Timing follows DESIGN.md: warm-up, then many timed repetitions (CUDA events on the GPU, the host clock on the CPU,
where every call is synchronous); mean, median and p95 are reported, never best-of-N. Every `time_*` function
returns one row's figures: `median_ms`/`p95_ms` are per-batch times, `img_per_s` = batch / median time.
Low precision is `runtime.autocast`'s, the same as `defectseg predict --dtype` and training use.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.transforms import Augmenter
from ..export import OnnxModel, export_onnx
from ..losses import build_loss
from ..models import PixelModel
from ..runtime import DTYPES, autocast, parse_dtype
from ..step import TrainStep

__all__ = ["bench_dtype", "time_inference", "time_onnxruntime", "time_openvino", "time_training"]


def bench_dtype(name: str) -> torch.dtype:
    """`runtime.parse_dtype` for a benchmark row, which always names its dtype: None is refused, not float32."""
    if name is None:
        raise ValueError(f"unknown dtype None; use one of {', '.join(DTYPES)} (comma-separated for several)")
    dtype = parse_dtype(name)
    assert dtype is not None  # parse_dtype maps only None to None
    return dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> str:
    """Start a fresh peak-memory window; returns how the peak will be measured (for the report)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated"
    try:
        # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS.
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM (process peak RSS, reset per row)"
    except OSError:
        return "ru_maxrss (process peak RSS since start)"


def _peak_memory_mb(device: torch.device, source: str) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if source.startswith("VmHWM"):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    import resource  # Unix only: imported where it is the last resort, so the module loads everywhere

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _timed(
    step: Callable[[], Any], device: torch.device, warmup: int, repeats: int, max_seconds: float, min_repeats: int = 5
) -> list[float]:
    """Seconds per call of `step`: `warmup` untimed calls, then up to `repeats` timed ones (fewer, but at least
    `min(min_repeats, repeats)`, once `max_seconds` have passed). CUDA: one event pair per call, read after it."""
    for _ in range(warmup):
        step()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    floor = min(min_repeats, repeats)
    while len(times) < repeats:
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        if len(times) >= floor and time.perf_counter() - start > max_seconds:
            break
    return times


def _stats(times: list[float], batch: int) -> dict[str, Any]:
    t = np.asarray(times, dtype=np.float64)
    median = float(np.median(t))
    return {
        "mean_ms": float(t.mean() * 1e3),
        "median_ms": median * 1e3,
        "p95_ms": float(np.percentile(t, 95) * 1e3),
        "img_per_s": batch / median,
        "repeats": len(times),
    }


def skipped_row(note: str, mem_source: str | None = None) -> dict[str, Any]:
    """The figures of a row that could not be timed (no compiler, no openvino, out of memory): empty, with why."""
    return {
        "mean_ms": None,
        "median_ms": None,
        "p95_ms": None,
        "img_per_s": None,
        "repeats": 0,
        "peak_mem_mb": None,
        "mem_source": mem_source,
        "note": note,
    }


def time_inference(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    *,
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
    min_repeats: int = 5,
) -> dict[str, Any]:
    """Time the forward pass of `model` on a random input of `input_shape` (B, C, H, W) -> logits (B, K, H, W).

    The model is put in eval mode on `device` (moved in place); calls run under `torch.inference_mode()`.
    Returns mean_ms, median_ms, p95_ms (per batch), img_per_s (B / median), repeats, peak_mem_mb, mem_source
    and note. `compile` wraps the model in torch.compile; if compiling fails the timings are None and the note
    says why. `cuda_graphs` captures one CUDA graph for the fixed shape and times its replays.
    """
    dev = torch.device(device)
    if cuda_graphs and dev.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device; drop --cuda-graphs on the CPU")
    amp = bench_dtype(dtype)
    model = model.to(dev).eval()
    x = torch.randn(input_shape, device=dev)  # never zeros: they can run faster than real data
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    source = _reset_peak_memory(dev)
    note = ""
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model

    def run(inp: torch.Tensor) -> torch.Tensor:
        # no autocast weight cache: CUDA graph capture requires that, and every mode then times the same casts
        with autocast(dev, amp, cache_enabled=False):
            return forward(inp)

    with torch.inference_mode():
        if compile:
            try:
                run(x)  # compiles here, outside the warm-up count
            except Exception as exc:  # inductor needs a C++ compiler on CPU, Triton on GPU; any failure skips
                msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                return skipped_row(f"skipped: torch.compile failed ({type(exc).__name__}: {msg})", source)
        step: Callable[[], Any]
        if cuda_graphs:
            static_x = x.clone()
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm up on a side stream, as capture requires
                for _ in range(3):
                    run(static_x)
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run(static_x)
            step = graph.replay
            note = "CUDA graph replay"
        else:

            def step() -> torch.Tensor:
                return run(x)

        times = _timed(step, dev, warmup, repeats, max_seconds, min_repeats)
    return {
        **_stats(times, input_shape[0]),
        "peak_mem_mb": _peak_memory_mb(dev, source),
        "mem_source": source,
        "note": note,
    }


def time_onnxruntime(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    device: str | torch.device = "cpu",
    *,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
    min_repeats: int = 5,
) -> dict[str, Any]:
    """Export `model` with dynamic axes to a temp dir and time `OnnxModel` on a random (B, C, H, W) float32 input.

    On CUDA the ORT CUDA provider is asked for; the timed call includes the host<->device copies (OnnxModel takes
    and returns numpy arrays) and ORT's GPU memory is invisible to torch, so peak memory is not reported there.
    """
    dev = torch.device(device)
    b, c, h, w = input_shape
    with tempfile.TemporaryDirectory(prefix="defectseg-bench-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_shape=(1, c, h, w), dynamic=True)
        ort_model = OnnxModel(
            path, providers=["cuda"] if dev.type == "cuda" else ["cpu"], threads=threads or torch.get_num_threads()
        )
        note = "" if dev.type == "cpu" else f"providers {ort_model.providers}; includes host<->device copies"
        if dev.type == "cuda" and ort_model.providers[0] != "CUDAExecutionProvider":
            note = "CUDA provider unavailable in this onnxruntime build: ran on the CPU"
        x = np.random.default_rng(0).standard_normal((b, c, h, w), dtype=np.float32)
        source = _reset_peak_memory(torch.device("cpu"))
        times = _timed(lambda: ort_model(x), torch.device("cpu"), warmup, repeats, max_seconds, min_repeats)
        peak = _peak_memory_mb(torch.device("cpu"), source) if dev.type == "cpu" else None
    return {**_stats(times, b), "peak_mem_mb": peak, "mem_source": source if peak is not None else "n/a", "note": note}


def time_openvino(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    *,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
    min_repeats: int = 5,
) -> dict[str, Any]:
    """Export `model` to ONNX (dynamic axes) and time OpenVINO's CPU plugin on it (float32, latency hint);
    a row with empty figures and a note when the `openvino` package is not installed."""
    try:
        import openvino as ov  # optional (not a dependency): without it the row is skipped, not the table
    except ImportError:
        return skipped_row("skipped: openvino is not installed")
    b, c, h, w = input_shape
    with tempfile.TemporaryDirectory(prefix="defectseg-bench-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_shape=(1, c, h, w), dynamic=True)
        compiled = ov.Core().compile_model(
            str(path),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((b, c, h, w), dtype=np.float32)
    source = _reset_peak_memory(torch.device("cpu"))
    times = _timed(lambda: request.infer({0: x}), torch.device("cpu"), warmup, repeats, max_seconds, min_repeats)
    return {
        **_stats(times, b),
        "peak_mem_mb": _peak_memory_mb(torch.device("cpu"), source),
        "mem_source": source,
        "note": f"openvino {ov.__version__}",
    }


def _training_batch(input_shape: tuple[int, int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic batch: images uint8 (B, C, H, W) and masks (B, H, W) 0/1 with one darker defect square each."""
    b, c, h, w = input_shape
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(64, 256, input_shape, generator=gen, dtype=torch.uint8)
    masks = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        y, x = (
            torch.randint(0, max(1, h // 2), (1,), generator=gen).item(),
            torch.randint(0, max(1, w // 2), (1,), generator=gen).item(),
        )
        masks[i, y : y + max(1, h // 4), x : x + max(1, w // 4)] = 1
        images[i, :, y : y + max(1, h // 4), x : x + max(1, w // 4)] //= 2
    return images.to(device), masks.to(device)


def time_training(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    *,
    channels_last: bool = False,
    compile: bool = False,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 10.0,
    min_repeats: int = 5,
    lr: float = 1e-3,
    task: str = "segment",
) -> dict[str, Any]:
    """Time the trainer's training step (`step.TrainStep`) on a synthetic batch: images (B, C, H, W) uint8,
    masks (B, H, W).

    One step = on-device `Augmenter("light")` on image and mask, the model with its normalisation
    (`PixelModel`), `build_loss("bce-dice")` (a classifier, task "classify": BCE on the image label, as the
    trainer's), backward and an Adam step: the very step training runs (data
    loading excluded), under autocast to `dtype` (on the CPU: bf16 where it pays, `runtime.cpu_bf16`). The model
    is trained in place. Returns the
    same keys as `time_inference`; img_per_s = B / median step time.
    """
    dev = torch.device(device)
    amp = bench_dtype(dtype)
    model = PixelModel(model).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, masks = _training_batch(input_shape, dev)
    forward: nn.Module = torch.compile(model) if compile else model
    loss = nn.BCEWithLogitsLoss() if task == "classify" else build_loss("bce-dice")
    step = TrainStep(
        forward,
        loss.to(dev),
        torch.optim.Adam(model.parameters(), lr=lr),
        Augmenter("light", seed=0),
        task=task,
        amp=None if dtype == "fp32" else amp,
        channels_last=channels_last,
    )
    source = _reset_peak_memory(dev)
    if compile:
        try:
            step(images, masks)
        except Exception as exc:  # see time_inference
            return skipped_row(f"skipped: torch.compile failed ({type(exc).__name__})", source)
    times = _timed(lambda: step(images, masks), dev, warmup, repeats, max_seconds, min_repeats)
    return {
        **_stats(times, input_shape[0]),
        "peak_mem_mb": _peak_memory_mb(dev, source),
        "mem_source": source,
        "note": f"step.TrainStep: Augmenter(light) + {'bce' if task == 'classify' else 'bce-dice'} + Adam",
    }
