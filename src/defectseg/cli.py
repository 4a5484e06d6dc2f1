"""The `defectseg` command: demo, train, evaluate, predict, export, benchmark, data."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import config as C
from .anomaly import fit as fit_anomaly
from .bench import ablation_specs, bench_header, count_params, format_table, plot_throughput, run_benchmark
from .config import PRESETS, choices
from .data.cli import app as data_app
from .data.io import IMAGE_SUFFIXES, claim_file, find_images, write_atomic
from .demo import run_demo
from .evaluate import evaluate_checkpoint
from .export import export_checkpoint
from .models import create_model, list_models, model_task
from .outputs import ResultWriter
from .predictor import Predictor
from .trainer import TrainingError
from .trainer import train as run_train
from .watch import watch

app = typer.Typer(
    help="Find and localize surface defects in industrial images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data", help="Dataset tools: synthetic data, statistics.")
console = Console()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (what `systemctl stop` and `docker stop` send) stops like Ctrl-C: the results so far are written."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (an embedding caller): leave its handling alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_failed(exc: OSError, out: Path) -> None:
    """A write that failed (a full disk, a lost mount): one line, not a traceback."""
    _fail(
        ValueError(
            f"cannot write the results in {out}: {exc.strerror or exc}; free space there or choose another --out"
        )
    )


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {escape(str(exc))}")  # a value like "[bold]" is shown, not swallowed
    raise typer.Exit(2)


def _parse_set(items: list[str]) -> dict[str, Any]:
    """--set train.lr=0.001 --set model.options.width=8 -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _one_of(key: str) -> str:
    """The allowed values of a config key, from its registry (help strings never go stale)."""
    return ", ".join(choices(key))


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    return table


@app.command()
def train(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, help="Dataset folder."),
    format: Optional[str] = typer.Option(None, "--format", help=f"Layout: {_one_of('data.format')}."),
    model: Optional[str] = typer.Option(None, help="Model name (see `defectseg models`)."),
    preset: Optional[str] = typer.Option(None, help=f"Recipe: {', '.join(PRESETS)}."),
    config: Optional[Path] = typer.Option(None, help="YAML run config (sections data/model/train/infer)."),
    resume: Optional[Path] = typer.Option(None, help="Continue exactly from runs/<name>/last.pt."),
    name: Optional[str] = typer.Option(None, help="Run name: the run folder is <out-dir>/<name>."),
    out_dir: Optional[str] = typer.Option(None, help="Folder holding run folders (default runs)."),
    task: Optional[str] = typer.Option(None, help=f"{_one_of('train.task')} (classify: a gate for the cascade)."),
    epochs: Optional[int] = typer.Option(None),
    iterations: Optional[int] = typer.Option(None, help="Train this many steps instead of epochs."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    size: Optional[int] = typer.Option(
        None,
        help="Training resolution: size x size (with data.keep_aspect, "
        "about size² pixels at a tall or wide set's aspect).",
    ),
    loss: Optional[str] = typer.Option(None, help=f"{_one_of('train.loss')}."),
    augment: Optional[str] = typer.Option(None, help=f"{_one_of('data.augment')}."),
    split_file: Optional[str] = typer.Option(None, help="Reuse a split file (JSON lists train/val/test)."),
    encoder_weights: Optional[str] = typer.Option(None, help="Local file with torchvision-named encoder weights."),
    freeze_encoder_epochs: Optional[int] = typer.Option(None),
    reference: Optional[str] = typer.Option(
        None,
        help="Reference mode: a defect-free image file, or 'group' "
        "(the first defect-free training image of each class).",
    ),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    seed: Optional[int] = typer.Option(None),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and list) unreadable or inconsistent samples."),
    allow_unlabeled: bool = typer.Option(
        False, "--allow-unlabeled", help="Generic layout: images without a mask are defect-free."
    ),
    synthetic_defects: Optional[float] = typer.Option(
        None, help="Probability per good training image of a painted synthetic defect (with its mask)."
    ),
    copy_paste: Optional[float] = typer.Option(
        None, help="Probability per good training image of a real defect pasted from another image of the batch."
    ),
    defect_free_only: bool = typer.Option(
        False,
        "--defect-free-only",
        help="Ignore the real defective training images (learn from good parts "
        "with --synthetic-defects); threshold set on good validation images.",
    ),
    set_: list[str] = typer.Option([], "--set", help="Any config value: section.key=value (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run of the same name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per epoch, no progress bar."),
) -> None:
    """Train a model; writes runs/<name>/ (config, split, metrics, best.pt, last.pt, curves, report)."""
    try:
        if resume is not None:
            given = [
                max(p.opts, key=len)
                for p in ctx.command.params
                if p.name not in ("resume", "quiet")
                and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"
            ]
            if given:  # they would be ignored: a resumed run continues exactly as its config.yaml says
                raise ValueError(
                    f"--resume continues the run exactly as it was configured (its config.yaml), so {', '.join(given)} "
                    "would be ignored; drop them, or start a new run with them"
                )
            with _stop_on_sigterm():
                result = run_train(C.RunConfig(), resume=resume, quiet=quiet)
        else:
            overrides = {
                "name": name,
                "out_dir": out_dir,
                "data": {
                    "root": data,
                    "format": format,
                    "size": size,
                    "augment": augment,
                    "split_file": split_file,
                    "skip_bad": skip_bad or None,
                    "reference": reference,
                    "allow_unlabeled": allow_unlabeled or None,
                    "synthetic_defects": synthetic_defects,
                    "copy_paste": copy_paste,
                    "defect_free_only": defect_free_only or None,
                },
                "model": {
                    "name": model,
                    "encoder_weights": encoder_weights,
                    "freeze_encoder_epochs": freeze_encoder_epochs,
                },
                "train": {
                    "task": task,
                    "epochs": epochs,
                    "iterations": iterations,
                    "batch_size": batch_size,
                    "lr": lr,
                    "loss": loss,
                    "device": device,
                    "seed": seed,
                },
            }
            cfg = C.resolve(preset, config, overrides, _parse_set(set_))
            if not cfg.data.root:
                raise ValueError("no dataset: pass --data DIR (or data.root in --config)")
            run = fit_anomaly if cfg.train.task == "anomaly" else run_train
            with _stop_on_sigterm():  # a stop (Ctrl-C, SIGTERM) still calibrates best.pt and writes the report
                result = run(cfg, quiet=quiet, overwrite=overwrite)
    except (ValueError, TrainingError) as exc:
        _fail(exc)
    console.print(_metrics_table(f"test metrics ({result.run_dir})", result.test_metrics))
    console.print(f"run folder: {result.run_dir}  (report.md, best.pt, curves.png)")


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help="runs/<name>/best.pt"),
    data: Optional[str] = typer.Option(None, help="Dataset folder (default: the one it was trained on)."),
    split: str = typer.Option("test", help="train, val, test (from the run's split.json), or all."),
    format: Optional[str] = typer.Option(None, "--format"),
    split_file: Optional[str] = typer.Option(None, help="Use this split file instead of the run's."),
    device: str = typer.Option("auto"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
    gate: Optional[Path] = typer.Option(
        None,
        help="Classifier (task classify) or good-parts (task anomaly) checkpoint in front of the "
        "segmenter: the cascade, as `predict --gate` runs it.",
    ),
    gate_threshold: Optional[float] = typer.Option(
        None, help="Gate probability below which an image is OK (default: the gate checkpoint's own threshold)."
    ),
    threshold: Optional[float] = typer.Option(None, help="Defect probability threshold (default: the checkpoint's)."),
    min_area: Optional[int] = typer.Option(None, help="Drop defects smaller than this many pixels."),
) -> None:
    """Evaluate a checkpoint: pixel, image-level and per-defect metrics over a whole split."""
    try:
        if checkpoint.suffix.lower() == ".onnx":
            raise ValueError(
                f"{checkpoint} is an exported model; evaluate the checkpoint it came from "
                "(--checkpoint runs/<name>/best.pt), or run `defectseg predict` with the .onnx"
            )
        if json_out is not None:  # before the evaluation, not after it
            claim_file(json_out, "--json", overwrite, inputs=[checkpoint, gate, split_file])
        metrics = evaluate_checkpoint(
            checkpoint,
            data,
            split,
            format,
            device,
            split_file=split_file,
            gate=gate,
            gate_threshold=gate_threshold,
            threshold=threshold,
            min_area=min_area,
        )
    except ValueError as exc:
        _fail(exc)
    console.print(_metrics_table(f"{split} split: {checkpoint}{f' behind gate {gate}' if gate else ''}", metrics))
    if json_out:
        # NaN (a metric undefined on this split) is not JSON: write null.
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        try:
            write_atomic(json_out, json.dumps(clean, indent=2).encode())
        except OSError as exc:
            _fail(ValueError(f"cannot write {json_out}: {exc.strerror}; choose a writable path for --json"))


@app.command()
def models() -> None:
    """List the registered models with their parameter counts."""
    table = Table(title="models (1 input channel, 1 output)")
    for col in ("name", "task", "params"):
        table.add_column(col)
    for n in list_models():
        table.add_row(n, model_task(n), f"{count_params(create_model(n)):,}")
    console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Where the data, run folder and predictions go."),
    steps: Optional[int] = typer.Option(None, help="Training steps (default 400: about 3.5 minutes on 2 cores)."),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate synthetic DAGM-like data, train CheapNet-M, evaluate it, and predict a few images."""
    try:
        run_demo(out, device=device, quiet=quiet, console=console, iterations=steps)
    except ValueError as exc:
        _fail(exc)


# --- predict / export commands: below this line ---
@app.command("predict")
def predict_cmd(  # long only by its option list: the body reads in forty lines
    inputs: list[Path] = typer.Argument(
        ..., help="Image files and/or folders (their images; mask/label files and sub-folders are skipped and counted)."
    ),
    checkpoint: Path = typer.Option(..., help="runs/<name>/best.pt, or a model.onnx written by `defectseg export`."),
    out: Path = typer.Option(Path("predictions"), help="Output folder: masks, overlays, results.jsonl/csv."),
    threshold: Optional[float] = typer.Option(None, help="Defect probability threshold (default: the checkpoint's)."),
    min_area: Optional[int] = typer.Option(None, help="Drop defects smaller than this many pixels."),
    batch_size: int = typer.Option(8, help="Images (or tiles) per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    backend: str = typer.Option(
        "auto",
        help="auto (.onnx: onnxruntime; .pt on the CPU: exported to ONNX at load "
        "and run by onnxruntime when it matches PyTorch; else torch), torch "
        "or onnxruntime.",
    ),
    dtype: Optional[str] = typer.Option(None, help="bf16 or fp16 autocast (torch backend on CUDA)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format (CUDA)."),
    tile: Optional[int] = typer.Option(
        None,
        help="Tile mode: native-resolution NxN windows (0: resize mode; "
        "default: the checkpoint's infer.tile, usually resize mode).",
    ),
    tile_overlap: Optional[int] = typer.Option(None, help="Overlap of tiles in pixels."),
    gate: Optional[Path] = typer.Option(
        None,
        help="Classifier (task classify) or good-parts (task anomaly) checkpoint: images it calls OK skip "
        "segmentation.",
    ),
    gate_threshold: Optional[float] = typer.Option(
        None, help="Gate probability below which an image is OK (default: the gate checkpoint's own threshold)."
    ),
    reference: Optional[Path] = typer.Option(None, help="Defect-free reference image (reference-mode models)."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Write masks and results only."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous prediction in --out."),
    recursive: bool = typer.Option(
        False,
        "--recursive",
        "-r",
        help="Also predict images in sub-folders (mask folders such as Label/ stay skipped).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary."),
) -> None:
    """Find defects in images: writes <stem>_mask.png, <stem>_overlay.png, results.jsonl and results.csv.

    Masks: 0/255 for binary models, class ids for multi-class ones.

    results.jsonl: one object per image.

    results.csv: one row per defect; an image without defects (or unreadable) gets one row, defect columns empty.

    Unreadable images are reported and skipped; the exit code is 1 only when no image could be read.
    """
    try:
        paths, skipped = find_images(inputs, recursive=recursive, exclude=out)
        if any(p.resolve().parent == out.resolve() for p in paths):
            raise ValueError(
                f"--out {out} holds input images: masks written there could replace inputs "
                "(a_mask.png) and be read back as inputs; choose a separate output folder"
            )
        if not paths:
            raise ValueError(
                f"no image files ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) in "
                f"{', '.join(map(str, inputs))}"
                + (f" ({len(skipped)} entries skipped: {skipped[0][0]}: {skipped[0][1]}, ...)" if skipped else "")
            )
        predictor = Predictor.from_checkpoint(
            checkpoint,
            device=device,
            backend=backend,
            dtype=dtype,
            channels_last=channels_last,
            batch_size=batch_size,
            tile=tile,
            gate=gate,
            gate_threshold=gate_threshold,
            reference=reference,
            threshold=threshold,
            min_area=min_area,
            tile_overlap=tile_overlap,
        )
    except ValueError as exc:
        _fail(exc)
    if not quiet:
        console.print(
            f"predicting {len(paths)} images with {checkpoint} ({predictor.segmenter.backend}, "
            f"{predictor.mode} mode{', gate ' + str(gate) if gate else ''}) -> {out}"
        )
        if predictor.segmenter.note:
            console.print(f"backend {predictor.segmenter.backend}: {predictor.segmenter.note}")
    if skipped:
        console.print(f"skipped {len(skipped)} entries that are not images to predict:")
        for path, why in skipped[:20] if quiet else skipped:
            console.print(f"  {path}: {why}")
    t0 = time.perf_counter()
    writer = None
    try:
        with _stop_on_sigterm(), ResultWriter(out, overlays=not no_overlays, overwrite=overwrite) as writer:
            for r in predictor.predict_paths(paths):
                writer.write(r)
                if r.error is not None:
                    console.print(f"[yellow]skipped[/yellow] {r.path}: {r.error}")
                elif not quiet:
                    gp = "" if r.gate_probability is None else f"  gate {r.gate_probability:.3f}"
                    console.print(f"{r.verdict}  {r.path}  {len(r.defects)} defects{gp}")
    except ValueError as exc:
        _fail(exc)
    except OSError as exc:
        _write_failed(exc, out)
    except KeyboardInterrupt:
        n = 0 if writer is None else writer.n_images
        console.print(
            f"stopped after {n} of {len(paths)} images: their results are written; {out / 'INCOMPLETE.txt'} marks "
            "the run as unfinished"
        )
        raise typer.Exit(130) from None
    seconds = time.perf_counter() - t0
    done = writer.n_images - writer.n_errors
    console.print(
        f"{writer.n_images} images: {writer.n_ok} OK, {writer.n_ng} NG ({writer.n_defects} defects), "
        f"{writer.n_errors} unreadable; {seconds:.2f} s, {done / max(seconds, 1e-9):.1f} img/s "
        f"(reading and writing included)"
    )
    console.print(f"results: {out / 'results.jsonl'}, {out / 'results.csv'}")
    if writer.n_errors:
        console.print(f"[yellow]{writer.n_errors} unreadable images were skipped:[/yellow]")
        for path, why in writer.errors:
            console.print(f"  {path}: {why}")
    if done == 0:
        console.print("[red]error:[/red] no image could be read")
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A .pt checkpoint or an exported .onnx."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs an API key."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="DEFECTSEG_API_KEY",
        help="Required on every endpoint but /health and the page (X-API-Key header or Authorization: Bearer).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    backend: str = typer.Option("auto", help="auto, torch or onnxruntime (as predict)."),
    tile: Optional[int] = typer.Option(None, help="Tile images larger than this (as predict)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads of the network (default: all available)."),
    max_batch: int = typer.Option(8, help="Images per network call, gathered across concurrent requests."),
    max_wait_ms: float = typer.Option(5.0, help="How long a batch waits for more images."),
    max_body_mb: float = typer.Option(64.0, help="Larger request bodies get 413."),
    max_images: int = typer.Option(16, help="Images per request."),
    max_pixels: int = typer.Option(0, help="Pixels per image (0: DEFECTSEG_MAX_PIXELS or 150 M); larger get 413."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="A Host name a loopback server also answers to (repeat it for more)."
    ),
) -> None:
    """Serve a model over HTTP: POST /inspect, GET /health, GET /metrics, and a page at / (docs/service.md)."""
    from .serve import ServeConfig, serve  # fastapi and uvicorn load only for this command (a second to import)

    try:
        cfg = ServeConfig(
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_body_mb=max_body_mb,
            max_images=max_images,
            max_pixels=max_pixels,
        )
        serve(
            checkpoint,
            host,
            port,
            api_key,
            cfg,
            device=device,
            backend=backend,
            tile=tile,
            threads=threads,
            allowed_hosts=tuple(allowed_host),
        )
    except ValueError as exc:
        _fail(exc)


@app.command("watch")
def watch_cmd(
    in_dir: Path = typer.Argument(..., help="The folder the line drops images into."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A .pt checkpoint or an exported .onnx."),
    out: Path = typer.Option(..., "--out", help="Results folder (results.jsonl/csv, masks, overlays)."),
    interval: float = typer.Option(1.0, help="Seconds between polls."),
    settle: float = typer.Option(1.0, help="An image is taken once unchanged for this many seconds."),
    once: bool = typer.Option(False, "--once", help="Inspect what is there now, then exit."),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Write masks and records only."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    tile: Optional[int] = typer.Option(None, help="Tile images larger than this (as predict)."),
) -> None:
    """Inspect every image dropped into IN_DIR once (also across restarts), writing predict's records to --out."""
    try:
        predictor = Predictor.from_checkpoint(checkpoint, device=device, tile=tile)
        console.print(f"watching {in_dir} with {checkpoint} ({predictor.segmenter.backend}) -> {out}; Ctrl-C stops")
        with _stop_on_sigterm():
            n = watch(
                predictor,
                in_dir,
                out,
                interval,
                settle,
                once,
                overlays=not no_overlays,
                on_result=lambda r: console.print(
                    f"{r.verdict}  {r.path}  {len(r.defects)} defects" + (f"  {r.error}" if r.error else "")
                ),
            )
    except ValueError as exc:
        _fail(exc)
    except OSError as exc:
        _write_failed(exc, out)
    except KeyboardInterrupt:
        console.print("stopped")
        return
    console.print(f"{n} images inspected")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., help="runs/<name>/best.pt"),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    out: Optional[Path] = typer.Option(None, help="Output file (default: the checkpoint path with .onnx)."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Free batch/height/width, or fixed (1,C,N,N)."),
    size: Optional[int] = typer.Option(None, help="Traced (static: fixed) input side (default: training size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file (never a checkpoint)."),
) -> None:
    """Export a checkpoint to ONNX with its config as metadata, then check ONNX Runtime against PyTorch."""
    try:
        if format.lower() != "onnx":
            raise ValueError(f"unknown export format {format!r}; use --format onnx")
        report = export_checkpoint(checkpoint, out, dynamic=dynamic, size=size, overwrite=overwrite)
    except ValueError as exc:
        _fail(exc)
    console.print(
        f"wrote {report.path} ({'dynamic' if report.dynamic else 'static'} input "
        f"{'(B, ' + str(report.input_shape[1]) + ', H, W)' if report.dynamic else report.input_shape})"
    )
    line = (
        f"parity: max |onnxruntime - torch| = {report.max_abs_diff:.3g} on a random {report.input_shape} input "
        f"(logits up to {report.max_abs_logit:.3g})"
    )
    if report.ok:
        console.print(line)
    else:
        console.print(f"[red]{line}: the exported graph disagrees with PyTorch[/red]")
        raise typer.Exit(1)


# --- benchmark command: below this line ---
def _benchmark_command_line(ctx: typer.Context) -> str:
    """The command as it would be typed to repeat this run: every option that differs from its default."""
    # The settings every figure depends on are written even at their defaults; the rest only when changed.
    always = {"size", "channels", "device", "batch", "dtype", "backend"} | (
        set() if ctx.params.get("ablation") else {"models"}
    )
    parts = ["defectseg", "benchmark"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or not param.opts or (value == param.default and param.name not in always):
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            parts.append(flag if value else (param.secondary_opts or [flag])[0])
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"--{what} is empty; give a comma-separated list")
    return items


def _int_list(value: str, what: str) -> list[int]:
    try:
        return [int(v) for v in _split_list(value, what)]
    except ValueError:
        raise ValueError(f"--{what} {value!r}: expected comma-separated integers, e.g. 1,64,256") from None


@app.command("benchmark")
def benchmark_cmd(
    ctx: typer.Context,
    models: str = typer.Option(
        "cheapnet-s,cheapnet-m,mobile-unet", help="Comma-separated model names (see `defectseg models`)."
    ),
    size: int = typer.Option(512, help="Square input side (a multiple of each model's size_multiple)."),
    channels: int = typer.Option(1, help="Input channels for every model (the paper's Mobile-UNet used 3)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch: str = typer.Option("1", help="Comma-separated batch sizes: 1 gives latency, larger ones throughput."),
    dtype: str = typer.Option("fp32", help="Comma-separated: fp32, bf16, fp16 (autocast, as predict/train)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile (a row is skipped with a note if it fails)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Capture one CUDA graph, time replays (CUDA)."),
    backend: str = typer.Option(
        "auto",
        help="Comma-separated: torch (eager), torch-fused (BatchNorm folded, "
        "CheapNet's head rewritten), onnxruntime, onnxruntime-fused (the "
        "exported float32 graph), auto (what predict runs: onnxruntime-fused "
        "on the CPU, torch on CUDA).",
    ),
    train: bool = typer.Option(False, "--train", help="Time full training steps (augmentation, bce-dice, Adam)."),
    ablation: Optional[str] = typer.Option(
        None, help="'cheapnet': sweep width G for depthwise and standard convs instead of --models."
    ),
    widths: str = typer.Option(
        ",".join(map(str, (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))), help="Widths G for --ablation."
    ),
    convs: str = typer.Option("depthwise,standard", help="Conv kinds for --ablation."),
    threads: Optional[int] = typer.Option(None, help="CPU intra-op threads (default: torch's current setting)."),
    warmup: int = typer.Option(5, help="Untimed calls before timing."),
    repeats: int = typer.Option(30, help="Timed calls per row (at most)."),
    max_seconds: float = typer.Option(10.0, help="Stop repeating a row after this long (after 5 calls)."),
    format: str = typer.Option("md", "--format", help="md, csv or json."),
    out: Optional[Path] = typer.Option(None, help="Also write the table to this file."),
    plot: Optional[Path] = typer.Option(None, help="PNG of throughput against MACs (or accuracy with --results)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --out and --plot files."),
    results: Optional[Path] = typer.Option(None, help="JSON/CSV with a model column and an accuracy column."),
    metric: Optional[str] = typer.Option(None, help="Accuracy column of --results (default: first known one)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-row progress lines."),
) -> None:
    """Params, MACs, latency (mean/median/p95), throughput and peak memory per model and setting.

    Times are per batch (warm-up, then repeated calls; CUDA events on the GPU); img/s = batch / median time.
    The table's header records the device, versions, threads, load average and this command.
    """
    err = Console(stderr=True)
    try:
        if format not in ("md", "csv", "json"):
            raise ValueError(f"unknown --format {format!r}; use md, csv or json")
        if ablation is not None:
            if ablation != "cheapnet":
                raise ValueError(f"unknown --ablation {ablation!r}; the only sweep is 'cheapnet'")
            specs: list = ablation_specs(_int_list(widths, "widths"), _split_list(convs, "convs"))
        else:
            specs = _split_list(models, "models")
        if results is not None and plot is None:
            raise ValueError("--results only feeds the plot; add --plot out.png")
        for option, path in (("--out", out), ("--plot", plot)):
            if path is not None:
                claim_file(path, option, overwrite, inputs=[results])

        def progress(row: dict) -> None:
            if not quiet:
                figure = (
                    "skipped"
                    if row["median_ms"] is None
                    else f"median {row['median_ms']:.3g} ms, {row['img_per_s']:.1f} img/s"
                )
                err.print(f"{row['model']} {row['mode']} {row['backend']} {row['dtype']} b{row['batch']}: {figure}")

        load_start = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None
        rows = run_benchmark(
            specs,
            size,
            channels,
            device,
            _int_list(batch, "batch"),
            _split_list(dtype, "dtype"),
            backend=_split_list(backend, "backend"),
            channels_last=channels_last,
            compile=compile,
            cuda_graphs=cuda_graphs,
            train=train,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            max_seconds=max_seconds,
            progress=progress,
        )
        header = bench_header(rows[0]["device"], _benchmark_command_line(ctx), threads)
        if load_start is not None:  # a shared machine shows up here: compare with "load average" (at the end)
            header["load average at start"] = load_start
        text = format_table(rows, format, header)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, text.encode())
        if plot is not None:
            plot_throughput(rows, plot, results, metric)
    except ValueError as exc:
        _fail(exc)
    typer.echo(text, nl=False)
    if plot is not None and not quiet:
        err.print(f"plot: {plot}")


def main() -> None:  # pragma: no cover - console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
