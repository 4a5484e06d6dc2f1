"""`defectseg benchmark`'s table: what to time (models, settings), which combinations are possible, and the run.

`run_benchmark` validates every setting up front (`validate_setting`), then times each model x backend x dtype x
batch with `timing` and counts its cost with `macs`: one row (the keys of COLUMNS) per combination. Devices,
dtypes, autocast and the "auto" backend follow the rules every command shares (`runtime`, `backends`).
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..backends import auto_backend
from ..fuse import fuse_for_inference
from ..models import create_model, model_task
from ..runtime import DTYPES, autocast, cpu_bf16, pick_device
from .macs import count_params, macs_per_image
from .timing import bench_dtype, skipped_row, time_inference, time_onnxruntime, time_openvino, time_training

__all__ = [
    "ABLATION_CONVS",
    "ABLATION_WIDTHS",
    "BACKENDS",
    "COLUMNS",
    "BenchSetting",
    "ModelSpec",
    "ablation_specs",
    "resolve_backend",
    "run_benchmark",
    "validate_setting",
]

# "-fused": the model after `fuse.fuse_for_inference` (BatchNorm folded, CheapNet's full-resolution head rewritten);
# "auto": what the Predictor runs by default (`backends.auto_backend`: onnxruntime-fused on the CPU, torch on CUDA).
# "openvino-fused": the same graph compiled by OpenVINO's CPU plugin (`pip install openvino`; not a dependency).
BACKENDS = ("torch", "torch-fused", "onnxruntime", "onnxruntime-fused", "openvino-fused", "auto")
ABLATION_WIDTHS: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ABLATION_CONVS: tuple[str, ...] = ("depthwise", "standard")
# One row per (model, mode, dtype, batch): `median_ms`/`p95_ms` are per-batch times, `img_per_s` = batch / median.
COLUMNS = (
    "model",
    "mode",
    "backend",
    "device",
    "dtype",
    "batch",
    "size",
    "channels",
    "channels_last",
    "compile",
    "cuda_graphs",
    "threads",
    "params",
    "macs",
    "mean_ms",
    "median_ms",
    "p95_ms",
    "img_per_s",
    "repeats",
    "peak_mem_mb",
    "mem_source",
    "note",
)


@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: `label` in the table, built as `create_model(name, in_channels, **options)`."""

    label: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def task(self) -> str:
        """segment, or classify for the classifiers (their training step scores the image label)."""
        return model_task(self.name)

    def build(self, in_channels: int) -> nn.Module:
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


def ablation_specs(widths: Sequence[int] = ABLATION_WIDTHS, convs: Sequence[str] = ABLATION_CONVS) -> list[ModelSpec]:
    """CheapNet at every width G and conv kind (the paper's Table III): labels like `cheapnet-G32-depthwise`."""
    for c in convs:
        if c not in ABLATION_CONVS:
            raise ValueError(f"ablation conv kind {c!r} unknown; use {', '.join(ABLATION_CONVS)}")
    for g in widths:
        if not isinstance(g, int) or g < 1:
            raise ValueError(f"ablation width {g!r} must be a positive integer, e.g. 2,32,1024")
    return [ModelSpec(f"cheapnet-G{g}-{c}", "cheapnet", (("width", g), ("conv", c))) for c in convs for g in widths]


# ------------------------------------------------------------------------------------------------ validation
def _check_dtype_supported(device: torch.device, dtype: str) -> None:
    """Run one tiny conv under autocast so an unsupported (device, dtype) fails here, not mid-table."""
    if dtype == "fp32":
        return
    conv = nn.Conv2d(2, 2, 3, padding=1, groups=2).to(device)
    try:
        with torch.inference_mode(), autocast(device, DTYPES[dtype], cache_enabled=False):
            conv(torch.randn(1, 2, 8, 8, device=device))
    except RuntimeError as exc:
        raise ValueError(
            f"dtype {dtype} is not supported on {device} by this torch ({torch.__version__}): {exc}; use --dtype fp32"
        ) from exc


def validate_setting(setting: BenchSetting, batches: Sequence[int]) -> torch.device:
    """Reject impossible combinations up front (before any model is timed); returns the resolved device."""
    dev = pick_device(setting.device)
    bench_dtype(setting.dtype)
    if setting.backend not in BACKENDS:
        raise ValueError(f"unknown backend {setting.backend!r}; use one or more of {', '.join(BACKENDS)}")
    if setting.size < 1 or setting.channels < 1:
        raise ValueError(f"--size and --channels must be positive, got {setting.size} and {setting.channels}")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be positive integers, got {list(batches)}")
    if setting.threads is not None and setting.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {setting.threads}")
    if setting.warmup < 0 or setting.repeats < 1 or setting.max_seconds <= 0:
        raise ValueError(
            f"need warmup >= 0, repeats >= 1 and max_seconds > 0; got {setting.warmup}, "
            f"{setting.repeats}, {setting.max_seconds}"
        )
    if setting.cuda_graphs and dev.type != "cuda":
        raise ValueError("--cuda-graphs captures CUDA graphs and needs --device cuda; drop it on the CPU")
    if setting.train and resolve_backend(setting, dev) != "torch":
        raise ValueError(f"--train times the training step, which runs on torch; drop --backend {setting.backend}")
    if setting.backend.startswith("openvino") and dev.type != "cpu":
        raise ValueError("the openvino backend runs on the CPU here; use --device cpu")
    if resolve_backend(setting, dev).startswith(("onnxruntime", "openvino")):
        bad = [
            flag
            for flag, on in (
                ("--channels-last", setting.channels_last),
                ("--compile", setting.compile),
                ("--cuda-graphs", setting.cuda_graphs),
                ("--train", setting.train),
            )
            if on
        ]
        if bad:
            raise ValueError(
                f"{', '.join(bad)} apply to the torch backend only; drop them with --backend {setting.backend}"
            )
        if setting.dtype != "fp32":
            raise ValueError(
                f"the {setting.backend} backend runs the exported float32 graph; use --dtype fp32, not {setting.dtype}"
            )
    # The probe first (can this torch run a conv here at all, under the autocast the timing will use): the more
    # basic error; then the CPU rule, which refuses a dtype that would run but not be the one timed.
    _check_dtype_supported(dev, setting.dtype)
    if dev.type == "cpu" and setting.dtype != "fp32" and (setting.dtype != "bf16" or not cpu_bf16()):
        # runtime.autocast leaves any other CPU dtype off: the row would time float32 and carry this dtype's label
        mode = "training" if setting.train else "inference"
        raise ValueError(
            f"{mode} on the CPU autocasts only to bf16, and only where oneDNN runs it natively "
            f"(AVX-512, AMX: runtime.cpu_bf16), so --dtype {setting.dtype} would time float32 "
            "here; use --dtype fp32"
        )
    return dev


def resolve_backend(setting: BenchSetting, device: torch.device) -> str:
    """ "auto" -> what the Predictor runs: onnxruntime-fused for float32 inference on the CPU, torch otherwise
    (CUDA, training, or a torch-only option such as --channels-last or --compile); any other name unchanged."""
    if setting.backend != "auto":
        return setting.backend
    torch_only = setting.train or setting.channels_last or setting.compile or setting.cuda_graphs
    # the Predictor's ONNX Runtime path runs the fused model, which is this table's "onnxruntime-fused" row
    return "onnxruntime-fused" if auto_backend(device, setting.dtype, torch_only) == "onnxruntime" else "torch"


# ------------------------------------------------------------------------------------------------ the table
def run_benchmark(
    models: Sequence[str | ModelSpec],
    size: int = 512,
    channels: int = 1,
    device: str = "cpu",
    batches: Sequence[int] = (1,),
    dtypes: Sequence[str] = ("fp32",),
    *,
    backend: str | Sequence[str] = "torch",
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    train: bool = False,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 10.0,
    min_repeats: int = 5,
    progress: Callable[[dict[str, Any]], None] | None = None,
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
    settings = [
        BenchSetting(
            size,
            channels,
            device,
            d,
            bk,
            channels_last,
            compile,
            cuda_graphs,
            train,
            threads,
            warmup,
            repeats,
            max_seconds,
            min_repeats,
        )
        for bk in backends
        for d in dtypes
    ]
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
            raise ValueError(
                f"--size {size} is not a multiple of {multiple}, which {spec.label} needs; use "
                f"{-(-size // multiple) * multiple}"
            )
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
                            result = time_training(
                                fresh,
                                shape,
                                dev,
                                s.dtype,
                                channels_last=channels_last,
                                compile=compile,
                                task=spec.task,
                                **kw,
                            )
                        elif bk.startswith("openvino"):
                            result = time_openvino(fresh, shape, threads=torch.get_num_threads(), **kw)
                        elif bk.startswith("onnxruntime"):
                            result = time_onnxruntime(fresh, shape, dev, threads=torch.get_num_threads(), **kw)
                        else:
                            result = time_inference(
                                fresh,
                                shape,
                                dev,
                                s.dtype,
                                channels_last=channels_last,
                                compile=compile,
                                cuda_graphs=cuda_graphs,
                                **kw,
                            )
                    except (torch.OutOfMemoryError, MemoryError) as exc:
                        # A batch too large for the device is a fact of the table, not a reason to lose it.
                        result = skipped_row(f"skipped: out of memory ({type(exc).__name__})")
                    row = {
                        "model": spec.label,
                        "mode": "train" if train else "infer",
                        "backend": bk,
                        "device": str(dev),
                        "dtype": s.dtype,
                        "batch": b,
                        "size": size,
                        "channels": channels,
                        "channels_last": channels_last,
                        "compile": compile,
                        "cuda_graphs": cuda_graphs,
                        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                        "params": params,
                        "macs": macs,
                        **result,
                    }
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
