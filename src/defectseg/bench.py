"""Model cost: parameters and multiply-accumulates (MACs), counted from the layers that do the work.

MACs count conv, grouped/depthwise conv, transposed conv and linear layers (bias, BatchNorm and
activations are not multiply-accumulates and are left out, as FlopCounterMode does). A transposed conv
multiplies every *input* element by its kernel slice: MACs = B * C_in * H_in * W_in * (C_out/groups) * k².
Profilers such as thop count it over the output instead, which over-counts strided transposed convs.

The rest of the module is `defectseg benchmark`: `run_benchmark` times models (latency, throughput, peak memory)
with `time_inference`, `time_onnxruntime` or `time_training`, `format_table` writes md/csv/json with a header from
`bench_header`, `plot_throughput` draws throughput against MACs or accuracy. See docs/benchmarks.md.
"""
from __future__ import annotations

import copy
import csv
import gc
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .fuse import fuse_for_inference


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.ConvTranspose2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return inp.numel() * (module.out_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of `input_shape` (B, C, H, W).

    Runs the model once on the CPU (meta tensors do not run BatchNorm in eval everywhere) in eval mode.
    """
    total = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, args[0], out)

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


# ====================================================================================================== benchmark
# Timing follows DESIGN.md: warm-up, then many timed repetitions (CUDA events on the GPU, the host clock on the CPU,
# where every call is synchronous); mean, median and p95 are reported, never best-of-N. One row per
# (model, mode, dtype, batch): `median_ms`/`p95_ms` are per-batch times, `img_per_s` = batch / median time.

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# "-fused": the model after `fuse.fuse_for_inference` (BatchNorm folded, CheapNet's full-resolution head rewritten);
# "auto": what the Predictor runs by default (onnxruntime-fused on the CPU, torch on CUDA).
# "openvino-fused": the same graph compiled by OpenVINO's CPU plugin (`pip install openvino`; not a dependency).
BACKENDS = ("torch", "torch-fused", "onnxruntime", "onnxruntime-fused", "openvino-fused", "auto")
ABLATION_WIDTHS: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ABLATION_CONVS: tuple[str, ...] = ("depthwise", "standard")
COLUMNS = ("model", "mode", "backend", "device", "dtype", "batch", "size", "channels", "channels_last", "compile",
           "cuda_graphs", "threads", "params", "macs", "mean_ms", "median_ms", "p95_ms", "img_per_s", "repeats",
           "peak_mem_mb", "mem_source", "note")


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: `label` in the table, built as `create_model(name, in_channels, **options)`."""

    label: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def task(self) -> str:
        """segment, or classify for the classifiers (their training step scores the image label)."""
        from .models import model_task

        return model_task(self.name)

    def build(self, in_channels: int) -> nn.Module:
        from .models import create_model

        return create_model(self.name, in_channels=in_channels, **dict(self.options))


@dataclass(frozen=True)
class BenchSetting:
    """How one measurement runs (everything but the model and the batch size)."""

    size: int = 512
    channels: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    backend: str = "torch"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    train: bool = False
    threads: int | None = None
    warmup: int = 5
    repeats: int = 30
    max_seconds: float = 10.0  # stop repeating after this long (but never before `min_repeats`)
    min_repeats: int = 5


def ablation_specs(widths: Sequence[int] = ABLATION_WIDTHS,
                   convs: Sequence[str] = ABLATION_CONVS) -> list[ModelSpec]:
    """CheapNet at every width G and conv kind (the paper's Table III): labels like `cheapnet-G32-depthwise`."""
    for c in convs:
        if c not in ABLATION_CONVS:
            raise ValueError(f"ablation conv kind {c!r} unknown; use {', '.join(ABLATION_CONVS)}")
    for g in widths:
        if not isinstance(g, int) or g < 1:
            raise ValueError(f"ablation width {g!r} must be a positive integer, e.g. 2,32,1024")
    return [ModelSpec(f"cheapnet-G{g}-{c}", "cheapnet", (("width", g), ("conv", c))) for c in convs for g in widths]


# ------------------------------------------------------------------------------------------------ validation
def resolve_device(device: str) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> torch.device, with a clear error when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported by the benchmark; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} requested but CUDA is not available (torch {torch.__version__}, "
                             "no usable GPU); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def parse_dtype(name: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)} (comma-separated for several)")
    return DTYPES[name]


def _check_dtype_supported(device: torch.device, dtype: str) -> None:
    """Run one tiny conv under autocast so an unsupported (device, dtype) fails here, not mid-table."""
    if dtype == "fp32":
        return
    conv = nn.Conv2d(2, 2, 3, padding=1, groups=2).to(device)
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=DTYPES[dtype]):
            conv(torch.randn(1, 2, 8, 8, device=device))
    except RuntimeError as exc:
        raise ValueError(f"dtype {dtype} is not supported on {device} by this torch ({torch.__version__}): {exc}; "
                         "use --dtype fp32") from exc


def validate_setting(setting: BenchSetting, batches: Sequence[int]) -> torch.device:
    """Reject impossible combinations up front (before any model is timed); returns the resolved device."""
    dev = resolve_device(setting.device)
    parse_dtype(setting.dtype)
    if setting.backend not in BACKENDS:
        raise ValueError(f"unknown backend {setting.backend!r}; use one or more of {', '.join(BACKENDS)}")
    if setting.size < 1 or setting.channels < 1:
        raise ValueError(f"--size and --channels must be positive, got {setting.size} and {setting.channels}")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive integers, got {list(batches)}")
    if setting.threads is not None and setting.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {setting.threads}")
    if setting.warmup < 0 or setting.repeats < 1 or setting.max_seconds <= 0:
        raise ValueError(f"need warmup >= 0, repeats >= 1 and max_seconds > 0; got {setting.warmup}, "
                         f"{setting.repeats}, {setting.max_seconds}")
    if setting.cuda_graphs and dev.type != "cuda":
        raise ValueError("--cuda-graphs captures CUDA graphs and needs --device cuda; drop it on the CPU")
    if setting.train and resolve_backend(setting, dev) != "torch":
        raise ValueError(f"--train times the training step, which runs on torch; drop --backend {setting.backend}")
    if setting.backend.startswith("openvino") and dev.type != "cpu":
        raise ValueError("the openvino backend runs on the CPU here; use --device cpu")
    if resolve_backend(setting, dev).startswith(("onnxruntime", "openvino")):
        bad = [flag for flag, on in (("--channels-last", setting.channels_last), ("--compile", setting.compile),
                                     ("--cuda-graphs", setting.cuda_graphs), ("--train", setting.train)) if on]
        if bad:
            raise ValueError(f"{', '.join(bad)} apply to the torch backend only; drop them with --backend "
                             f"{setting.backend}")
        if setting.dtype != "fp32":
            raise ValueError(f"the {setting.backend} backend runs the exported float32 graph; use --dtype fp32, "
                             f"not {setting.dtype}")
    if setting.train and dev.type == "cpu" and setting.dtype != "fp32":
        from .engine import cpu_bf16

        if setting.dtype != "bf16" or not cpu_bf16():
            raise ValueError(f"training on the CPU autocasts only to bf16, and only where oneDNN runs it natively "
                             f"(AVX-512, AMX: engine.cpu_bf16), so --dtype {setting.dtype} would time float32 "
                             "here; use --dtype fp32")
    _check_dtype_supported(dev, setting.dtype)
    return dev


def resolve_backend(setting: BenchSetting, device: torch.device) -> str:
    """"auto" -> what the Predictor runs: onnxruntime-fused for float32 inference on the CPU, torch otherwise
    (CUDA, training, or a torch-only option such as --channels-last or --compile); any other name unchanged."""
    if setting.backend != "auto":
        return setting.backend
    torch_only = setting.train or setting.channels_last or setting.compile or setting.cuda_graphs
    return "onnxruntime-fused" if device.type == "cpu" and setting.dtype == "fp32" and not torch_only else "torch"


# ------------------------------------------------------------------------------------------------ measurement
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
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _timed(step: Callable[[], Any], device: torch.device, warmup: int, repeats: int, max_seconds: float,
           min_repeats: int = 5) -> list[float]:
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
    return {"mean_ms": float(t.mean() * 1e3), "median_ms": median * 1e3,
            "p95_ms": float(np.percentile(t, 95) * 1e3), "img_per_s": batch / median, "repeats": len(times)}


def _autocast(device: torch.device, dtype: str):
    # Autocast, as `defectseg predict --dtype` and training do: convs run in the low precision, the weights stay
    # float32. fp32 runs plain (autocast disabled).
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32", cache_enabled=False)


def time_inference(model: nn.Module, input_shape: tuple[int, int, int, int], device: str | torch.device = "cpu",
                   dtype: str = "fp32", *, channels_last: bool = False, compile: bool = False,
                   cuda_graphs: bool = False, warmup: int = 5, repeats: int = 30, max_seconds: float = 10.0,
                   min_repeats: int = 5) -> dict[str, Any]:
    """Time the forward pass of `model` on a random input of `input_shape` (B, C, H, W) -> logits (B, K, H, W).

    The model is put in eval mode on `device` (moved in place); calls run under `torch.inference_mode()`.
    Returns mean_ms, median_ms, p95_ms (per batch), img_per_s (B / median), repeats, peak_mem_mb, mem_source
    and note. `compile` wraps the model in torch.compile; if compiling fails the timings are None and the note
    says why. `cuda_graphs` captures one CUDA graph for the fixed shape and times its replays.
    """
    dev = torch.device(device)
    if cuda_graphs and dev.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device; drop --cuda-graphs on the CPU")
    parse_dtype(dtype)
    model = model.to(dev).eval()
    x = torch.randn(input_shape, device=dev)  # never zeros: they can run faster than real data
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    source = _reset_peak_memory(dev)
    note = ""
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model

    def run(inp: torch.Tensor) -> torch.Tensor:
        with _autocast(dev, dtype):
            return forward(inp)

    with torch.inference_mode():
        if compile:
            try:
                run(x)  # compiles here, outside the warm-up count
            except Exception as exc:  # inductor needs a C++ compiler on CPU, Triton on GPU; any failure skips
                msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                return {"mean_ms": None, "median_ms": None, "p95_ms": None, "img_per_s": None, "repeats": 0,
                        "peak_mem_mb": None, "mem_source": source,
                        "note": f"skipped: torch.compile failed ({type(exc).__name__}: {msg})"}
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
    return {**_stats(times, input_shape[0]), "peak_mem_mb": _peak_memory_mb(dev, source), "mem_source": source,
            "note": note}


def time_onnxruntime(model: nn.Module, input_shape: tuple[int, int, int, int], device: str | torch.device = "cpu",
                     *, threads: int | None = None, warmup: int = 5, repeats: int = 30, max_seconds: float = 10.0,
                     min_repeats: int = 5) -> dict[str, Any]:
    """Export `model` with dynamic axes to a temp dir and time `OnnxModel` on a random (B, C, H, W) float32 input.

    On CUDA the ORT CUDA provider is asked for; the timed call includes the host<->device copies (OnnxModel takes
    and returns numpy arrays) and ORT's GPU memory is invisible to torch, so peak memory is not reported there.
    """
    from .export import OnnxModel, export_onnx

    dev = torch.device(device)
    b, c, h, w = input_shape
    with tempfile.TemporaryDirectory(prefix="defectseg-bench-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_shape=(1, c, h, w), dynamic=True)
        ort_model = OnnxModel(path, providers=["cuda"] if dev.type == "cuda" else ["cpu"],
                              threads=threads or torch.get_num_threads())
        note = "" if dev.type == "cpu" else f"providers {ort_model.providers}; includes host<->device copies"
        if dev.type == "cuda" and ort_model.providers[0] != "CUDAExecutionProvider":
            note = "CUDA provider unavailable in this onnxruntime build: ran on the CPU"
        x = np.random.default_rng(0).standard_normal((b, c, h, w), dtype=np.float32)
        source = _reset_peak_memory(torch.device("cpu"))
        times = _timed(lambda: ort_model(x), torch.device("cpu"), warmup, repeats, max_seconds, min_repeats)
        peak = _peak_memory_mb(torch.device("cpu"), source) if dev.type == "cpu" else None
    return {**_stats(times, b), "peak_mem_mb": peak, "mem_source": source if peak is not None else "n/a",
            "note": note}


def time_openvino(model: nn.Module, input_shape: tuple[int, int, int, int], *, threads: int | None = None,
                  warmup: int = 5, repeats: int = 30, max_seconds: float = 10.0, min_repeats: int = 5
                  ) -> dict[str, Any]:
    """Export `model` to ONNX (dynamic axes) and time OpenVINO's CPU plugin on it (float32, latency hint);
    a row with empty figures and a note when the `openvino` package is not installed."""
    from .export import export_onnx

    try:
        import openvino as ov
    except ImportError:
        return {"mean_ms": None, "median_ms": None, "p95_ms": None, "img_per_s": None, "repeats": 0,
                "peak_mem_mb": None, "mem_source": None, "note": "skipped: openvino is not installed"}
    b, c, h, w = input_shape
    with tempfile.TemporaryDirectory(prefix="defectseg-bench-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_shape=(1, c, h, w), dynamic=True)
        compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((b, c, h, w), dtype=np.float32)
    source = _reset_peak_memory(torch.device("cpu"))
    times = _timed(lambda: request.infer({0: x}), torch.device("cpu"), warmup, repeats, max_seconds, min_repeats)
    return {**_stats(times, b), "peak_mem_mb": _peak_memory_mb(torch.device("cpu"), source), "mem_source": source,
            "note": f"openvino {ov.__version__}"}


def _training_batch(input_shape: tuple[int, int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic batch: images uint8 (B, C, H, W) and masks (B, H, W) 0/1 with one darker defect square each."""
    b, c, h, w = input_shape
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(64, 256, input_shape, generator=gen, dtype=torch.uint8)
    masks = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        y, x = torch.randint(0, max(1, h // 2), (1,), generator=gen).item(), \
            torch.randint(0, max(1, w // 2), (1,), generator=gen).item()
        masks[i, y:y + max(1, h // 4), x:x + max(1, w // 4)] = 1
        images[i, :, y:y + max(1, h // 4), x:x + max(1, w // 4)] //= 2
    return images.to(device), masks.to(device)


def time_training(model: nn.Module, input_shape: tuple[int, int, int, int], device: str | torch.device = "cpu",
                  dtype: str = "fp32", *, channels_last: bool = False, compile: bool = False, warmup: int = 3,
                  repeats: int = 20, max_seconds: float = 10.0, min_repeats: int = 5, lr: float = 1e-3,
                  task: str = "segment") -> dict[str, Any]:
    """Time the engine's training step (`engine.TrainStep`) on a synthetic batch: images (B, C, H, W) uint8,
    masks (B, H, W).

    One step = on-device `Augmenter("light")` on image and mask, the model with its normalisation
    (`PixelModel`), `build_loss("bce-dice")` (a classifier, task "classify": BCE on the image label, as the
    trainer's), backward and an Adam step: the very step training runs (data
    loading excluded), under autocast to `dtype` (on the CPU: bf16 where it pays, `engine.cpu_bf16`). The model
    is trained in place. Returns the
    same keys as `time_inference`; img_per_s = B / median step time.
    """
    from .data.transforms import Augmenter
    from .engine import TrainStep
    from .losses import build_loss
    from .models import PixelModel

    dev = torch.device(device)
    parse_dtype(dtype)
    model = PixelModel(model).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images, masks = _training_batch(input_shape, dev)
    forward: nn.Module = torch.compile(model) if compile else model
    loss = nn.BCEWithLogitsLoss() if task == "classify" else build_loss("bce-dice")
    step = TrainStep(forward, loss.to(dev), torch.optim.Adam(model.parameters(), lr=lr),
                     Augmenter("light", seed=0), task=task, amp=None if dtype == "fp32" else DTYPES[dtype],
                     channels_last=channels_last)
    source = _reset_peak_memory(dev)
    if compile:
        try:
            step(images, masks)
        except Exception as exc:  # see time_inference
            return {"mean_ms": None, "median_ms": None, "p95_ms": None, "img_per_s": None, "repeats": 0,
                    "peak_mem_mb": None, "mem_source": source,
                    "note": f"skipped: torch.compile failed ({type(exc).__name__})"}
    times = _timed(lambda: step(images, masks), dev, warmup, repeats, max_seconds, min_repeats)
    return {**_stats(times, input_shape[0]), "peak_mem_mb": _peak_memory_mb(dev, source), "mem_source": source,
            "note": f"engine.TrainStep: Augmenter(light) + {'bce' if task == 'classify' else 'bce-dice'} + Adam"}


def macs_per_image(model: nn.Module, channels: int, size: int) -> int:
    """`count_macs` of a (1, channels, size, size) input, counted at a small size and scaled when that is exact.

    For a fully convolutional net whose every level divides exactly, MACs grow as size²; this is checked by
    counting at s0 and 2*s0 (s0: the first multiple of size_multiple >= 64) and used only when size is a multiple
    of s0 and macs(2*s0) == 4*macs(s0) (never for nets with linear heads). Saves a full-size CPU forward of huge models.
    """
    multiple = int(getattr(model, "size_multiple", 1))
    s0 = multiple * -(-64 // multiple)  # the smallest multiple of size_multiple >= 64
    if size >= 4 * s0 and size % s0 == 0:
        try:
            small = count_macs(model, (1, channels, s0, s0))
            double = count_macs(model, (1, channels, 2 * s0, 2 * s0))
        except ValueError:  # a model with a larger minimum input: count at full size
            small, double = 0, 1
        if double == 4 * small:
            return small * (size // s0) ** 2
    return count_macs(model, (1, channels, size, size))


# ------------------------------------------------------------------------------------------------ the table
def run_benchmark(models: Sequence[str | ModelSpec], size: int = 512, channels: int = 1, device: str = "cpu",
                  batches: Sequence[int] = (1,), dtypes: Sequence[str] = ("fp32",), *,
                  backend: str | Sequence[str] = "torch",
                  channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False, train: bool = False,
                  threads: int | None = None, warmup: int = 5, repeats: int = 30, max_seconds: float = 10.0,
                  min_repeats: int = 5, progress: Callable[[dict[str, Any]], None] | None = None
                  ) -> list[dict[str, Any]]:
    """One row (dict with the keys of COLUMNS) per model x backend x dtype x batch; inputs are (batch, channels,
    size, size). `backend`: one of BACKENDS or several (rows of one run, so their ratios are comparable).

    params and macs (per image, count_params / count_macs conventions) are counted on the float32 model.
    `threads` sets torch's intra-op threads (and ORT's) for the run, restored afterwards. `progress` is called
    with each row as it is finished. Every combination is validated before anything is timed.
    """
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(m, m) for m in models]
    if not specs:
        raise ValueError("no models given; e.g. --models cheapnet-s,cheapnet-m")
    backends = [backend] if isinstance(backend, str) else list(backend)
    settings = [BenchSetting(size, channels, device, d, bk, channels_last, compile, cuda_graphs, train, threads,
                             warmup, repeats, max_seconds, min_repeats) for bk in backends for d in dtypes]
    if not settings:
        raise ValueError("no dtypes or backends given; e.g. --dtype fp32,bf16 --backend torch,onnxruntime")
    dev = validate_setting(settings[0], batches)
    for s in settings[1:]:
        validate_setting(s, batches)
    built = []
    for spec in specs:
        model = spec.build(channels)  # ValueError for unknown names / options
        multiple = int(getattr(model, "size_multiple", 1))
        if size % multiple:
            raise ValueError(f"--size {size} is not a multiple of {multiple}, which {spec.label} needs; use "
                             f"{-(-size // multiple) * multiple}")
        built.append((spec, model))
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    try:
        for spec, model in built:
            params, macs = count_params(model), macs_per_image(model, channels, size)
            for s in settings:
                for b in batches:
                    bk = resolve_backend(s, dev)
                    # each setting starts from the same untouched weights
                    fresh = fuse_for_inference(model) if bk.endswith("-fused") else copy.deepcopy(model)
                    shape = (b, channels, size, size)
                    kw = dict(warmup=warmup, repeats=repeats, max_seconds=max_seconds, min_repeats=min_repeats)
                    try:
                        if train:
                            result = time_training(fresh, shape, dev, s.dtype, channels_last=channels_last,
                                                   compile=compile, task=spec.task, **kw)
                        elif bk.startswith("openvino"):
                            result = time_openvino(fresh, shape, threads=torch.get_num_threads(), **kw)
                        elif bk.startswith("onnxruntime"):
                            result = time_onnxruntime(fresh, shape, dev, threads=torch.get_num_threads(), **kw)
                        else:
                            result = time_inference(fresh, shape, dev, s.dtype, channels_last=channels_last,
                                                    compile=compile, cuda_graphs=cuda_graphs, **kw)
                    except (torch.OutOfMemoryError, MemoryError) as exc:
                        # A batch too large for the device is a fact of the table, not a reason to lose it.
                        result = {"mean_ms": None, "median_ms": None, "p95_ms": None, "img_per_s": None,
                                  "repeats": 0, "peak_mem_mb": None, "mem_source": None,
                                  "note": f"skipped: out of memory ({type(exc).__name__})"}
                    row = {"model": spec.label, "mode": "train" if train else "infer", "backend": bk,
                           "device": str(dev), "dtype": s.dtype, "batch": b, "size": size, "channels": channels,
                           "channels_last": channels_last, "compile": compile, "cuda_graphs": cuda_graphs,
                           "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                           "params": params, "macs": macs, **result}
                    rows.append({k: row.get(k) for k in COLUMNS})
                    del fresh
                    gc.collect()
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    if progress is not None:
                        progress(rows[-1])
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def bench_header(device: str | torch.device, command: str, threads: int | None = None) -> dict[str, str]:
    """What every benchmark table carries: device, versions, threads, load average, date and the command."""
    from . import __version__

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    header = {"command": command, "device": _device_name(dev), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
              "defectseg": __version__, "platform": platform.platform()}
    try:
        import onnxruntime

        header["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        header["onnxruntime"] = "not installed"
    if dev.type == "cuda":
        header["cuda"] = str(torch.version.cuda)
        header["cudnn"] = str(torch.backends.cudnn.version())
        header["peak memory"] = "torch.cuda.max_memory_allocated (reset per row)"
    else:
        header["threads"] = str(threads or torch.get_num_threads())
        header["peak memory"] = "process peak RSS from /proc/self/status VmHWM, reset per row (includes the Python " \
                                "and library footprint)"
    if hasattr(os, "getloadavg"):
        header["load average (1/5/15 min, at the end)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header["timing"] = ("warm-up, then repeated calls; " + ("CUDA events" if dev.type == "cuda" else "host clock")
                        + "; ms per batch; img/s = batch / median")
    return header


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "macs":
        scale, unit = next((s, u) for s, u in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")) if value >= s or s == 1)
        return f"{value / scale:.3g} {unit}".strip()
    if key == "params":
        return f"{value:,}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if key in ("img_per_s", "peak_mem_mb") else f"{value:.3g}" if value < 10 else \
            f"{value:.1f}"
    return str(value)


_MD_COLUMNS = ("model", "mode", "backend", "dtype", "batch", "channels_last", "compile", "cuda_graphs", "params",
               "macs", "mean_ms", "median_ms", "p95_ms", "img_per_s", "peak_mem_mb", "repeats", "note")


def format_table(rows: Sequence[dict[str, Any]], fmt: str = "md", header: dict[str, str] | None = None) -> str:
    """Rows as a Markdown table ('md'), CSV ('csv', header as leading '# key: value' lines) or JSON ('json':
    {"header": {...}, "rows": [...]}). MACs are per image; times are per batch."""
    header = header or {}
    if fmt == "json":
        return json.dumps({"header": header, "rows": list(rows)}, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        for k, v in header.items():
            buf.write(f"# {k}: {v}\n")
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
        return buf.getvalue()
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}; use md, csv or json")
    lines = [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in header.items()]
    titles = {"macs": "MACs/img", "mean_ms": "mean ms", "median_ms": "median ms", "p95_ms": "p95 ms",
              "img_per_s": "img/s", "peak_mem_mb": "peak MiB", "channels_last": "ch-last", "cuda_graphs": "graphs"}
    lines += ["", "| " + " | ".join(titles.get(c, c) for c in _MD_COLUMNS) + " |",
              "|" + "|".join("---" for _ in _MD_COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c, r.get(c)).replace("|", "/") for c in _MD_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plot
_ACCURACY_COLUMNS = ("accuracy", "acc", "miou", "defect_iou", "iou", "dice", "f1", "ap", "auroc")


def load_results(path: str | Path, metric: str | None = None) -> tuple[dict[str, float], str]:
    """Accuracy per model from a JSON (list of objects, or {model: value | object}) or CSV file with a `model`
    column. `metric` names the column; by default the first of accuracy, acc, miou, defect_iou, iou, dice, f1,
    ap, auroc present (case-insensitive). Returns ({model: value}, column used)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"results file {path} does not exist; give a JSON or CSV file with model and accuracy")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict) and "model" not in data:
                # {model: value} or {model: {column: value, ...}}
                data = [{"model": k, **v} if isinstance(v, dict) else {"model": k, metric or "accuracy": v}
                        for k, v in data.items()]
            elif isinstance(data, dict):
                data = [data]
            records = list(data)
        else:
            records = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    except (json.JSONDecodeError, csv.Error, TypeError) as exc:
        raise ValueError(f"cannot read results file {path}: {exc}") from exc
    if not records or not all(isinstance(r, dict) and "model" in r for r in records):
        raise ValueError(f"{path}: expected records with a 'model' field and an accuracy column")
    keys = {k.lower(): k for k in records[0] if k != "model"}
    wanted = [metric.lower()] if metric else list(_ACCURACY_COLUMNS)
    column = next((keys[w] for w in wanted if w in keys), None)
    if column is None:
        raise ValueError(f"{path}: no accuracy column ({', '.join(wanted)}) among {sorted(keys.values())}; "
                         "name it with --metric")
    out: dict[str, float] = {}
    for r in records:
        try:
            out[str(r["model"])] = float(r[column])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {column} of model {r['model']!r} is not a number: {r[column]!r}") from None
    return out, column


def plot_throughput(rows: Sequence[dict[str, Any]], out_png: str | Path, results: str | Path | None = None,
                    metric: str | None = None) -> Path:
    """PNG of each model's best measured img/s against its MACs per image (log-log), or against the accuracy
    in `results` (see load_results) when given; models absent from the results file are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("img_per_s") and (r["model"] not in best or r["img_per_s"] > best[r["model"]]["img_per_s"]):
            best[r["model"]] = r
    if not best:
        raise ValueError("no timed rows to plot (every setting was skipped)")
    if results is not None:
        accuracy, column = load_results(results, metric)
        points = [(accuracy[m], r["img_per_s"], m) for m, r in best.items() if m in accuracy]
        if not points:
            raise ValueError(f"{results}: none of the benchmarked models ({', '.join(best)}) appears in it")
        xlabel = column
    else:
        points = [(r["macs"], r["img_per_s"], m) for m, r in best.items()]
        xlabel = "MACs per image"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    for x, y, label in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if results is None:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images/s (best measured setting)")
    any_row = next(iter(best.values()))
    ax.set_title(f"throughput on {any_row['device']}, {any_row['size']}x{any_row['size']}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
