"""Model cost and `defectseg benchmark`, one job per module (each imports only the ones listed before it):

- `macs`: parameters and multiply-accumulates (`count_params`, `count_macs`, `macs_per_image`), counted from the
  layers that do the work; a transposed conv is counted over its input.
- `timing`: one setting timed (latency, throughput, peak memory) with `time_inference`, `time_onnxruntime`,
  `time_openvino` or `time_training`.
- `run`: `run_benchmark`, the table: models (`ModelSpec`, `ablation_specs`), settings (`BenchSetting`,
  `validate_setting`, `resolve_backend`) and one row per combination (COLUMNS).
- `report`: `format_table` writes md/csv/json with a header from `bench_header`; `plot_throughput` draws
  throughput against MACs or accuracy (`load_results`).

See docs/benchmarks.md.
"""

from __future__ import annotations

from ..runtime import DTYPES
from .macs import count_macs, count_params, macs_per_image
from .report import bench_header, format_table, load_results, plot_throughput
from .run import (
    ABLATION_CONVS,
    ABLATION_WIDTHS,
    BACKENDS,
    COLUMNS,
    BenchSetting,
    ModelSpec,
    ablation_specs,
    resolve_backend,
    run_benchmark,
    validate_setting,
)
from .timing import time_inference, time_onnxruntime, time_openvino, time_training

__all__ = [
    "ABLATION_CONVS",
    "ABLATION_WIDTHS",
    "BACKENDS",
    "COLUMNS",
    "DTYPES",
    "BenchSetting",
    "ModelSpec",
    "ablation_specs",
    "bench_header",
    "count_macs",
    "count_params",
    "format_table",
    "load_results",
    "macs_per_image",
    "plot_throughput",
    "resolve_backend",
    "run_benchmark",
    "time_inference",
    "time_onnxruntime",
    "time_openvino",
    "time_training",
    "validate_setting",
]
