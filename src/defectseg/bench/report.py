"""The benchmark's output: the header every table carries (`bench_header`), the table as md/csv/json
(`format_table`), and a plot of throughput against MACs or accuracy (`plot_throughput`, `load_results`).
See docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .run import COLUMNS

__all__ = ["bench_header", "format_table", "load_results", "plot_throughput"]


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
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    header = {
        "command": command,
        "device": _device_name(dev),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "defectseg": __version__,
        "platform": platform.platform(),
    }
    try:
        import onnxruntime  # optional at run time: the header says when it is missing

        header["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        header["onnxruntime"] = "not installed"
    if dev.type == "cuda":
        header["cuda"] = str(torch.version.cuda)
        header["cudnn"] = str(torch.backends.cudnn.version())
        header["peak memory"] = "torch.cuda.max_memory_allocated (reset per row)"
    else:
        header["threads"] = str(threads or torch.get_num_threads())
        header["peak memory"] = (
            "process peak RSS from /proc/self/status VmHWM, reset per row (includes the Python and library footprint)"
        )
    if hasattr(os, "getloadavg"):
        header["load average (1/5/15 min, at the end)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header["timing"] = (
        "warm-up, then repeated calls; "
        + ("CUDA events" if dev.type == "cuda" else "host clock")
        + "; ms per batch; img/s = batch / median"
    )
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
        return (
            f"{value:.1f}" if key in ("img_per_s", "peak_mem_mb") else f"{value:.3g}" if value < 10 else f"{value:.1f}"
        )
    return str(value)


_MD_COLUMNS = (
    "model",
    "mode",
    "backend",
    "dtype",
    "batch",
    "channels_last",
    "compile",
    "cuda_graphs",
    "params",
    "macs",
    "mean_ms",
    "median_ms",
    "p95_ms",
    "img_per_s",
    "peak_mem_mb",
    "repeats",
    "note",
)


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
    titles = {
        "macs": "MACs/img",
        "mean_ms": "mean ms",
        "median_ms": "median ms",
        "p95_ms": "p95 ms",
        "img_per_s": "img/s",
        "peak_mem_mb": "peak MiB",
        "channels_last": "ch-last",
        "cuda_graphs": "graphs",
    }
    lines += [
        "",
        "| " + " | ".join(titles.get(c, c) for c in _MD_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _MD_COLUMNS) + "|",
    ]
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
                data = [
                    {"model": k, **v} if isinstance(v, dict) else {"model": k, metric or "accuracy": v}
                    for k, v in data.items()
                ]
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
        raise ValueError(
            f"{path}: no accuracy column ({', '.join(wanted)}) among {sorted(keys.values())}; name it with --metric"
        )
    out: dict[str, float] = {}
    for r in records:
        try:
            out[str(r["model"])] = float(r[column])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {column} of model {r['model']!r} is not a number: {r[column]!r}") from None
    return out, column


def plot_throughput(
    rows: Sequence[dict[str, Any]], out_png: str | Path, results: str | Path | None = None, metric: str | None = None
) -> Path:
    """PNG of each model's best measured img/s against its MACs per image (log-log), or against the accuracy
    in `results` (see load_results) when given; models absent from the results file are left out."""
    import matplotlib  # heavy, and only the plot needs it

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
