"""`defectseg data ...`: write synthetic DAGM-layout data, print dataset statistics, show or write a split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .formats import load_dataset
from .io import claim_file
from .splits import FRACTIONS_RULE, make_split, save_split, split_counts, split_warnings, valid_fractions
from .stats import dataset_stats
from .synthetic import write_dagm

app = typer.Typer(
    help="Datasets: write the synthetic DAGM-like default, print statistics, show the split train would use.",
    no_args_is_help=True,
)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the DAGM-layout data into."),
    n_per_class: int = typer.Option(70, help="Images per texture class (split into Train/Test)."),
    size: int = typer.Option(512, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed (same seed, same data)."),
    defective_fraction: float = typer.Option(1 / 7, help="Fraction of defective images per class."),
    classes: int = typer.Option(10, help="Number of texture classes (1..10)."),
    test_fraction: float = typer.Option(0.5, help="Fraction of each class written to Test/."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the Class<k> folders of an earlier synth in --out."
    ),
) -> None:
    """Write synthetic DAGM-like data (Class<k>/{Train,Test}/, Label/Labels.txt, Label/<id>_label.PNG)."""
    # Old files mixed with new ones leave a dataset that no longer loads (labels of one run, images of another).
    held = sorted(out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        raise typer.BadParameter(
            f"{out} is not empty ({len(held)} entries, e.g. {held[0].name}); choose an empty "
            "or new folder, or pass --overwrite to replace an earlier synth there",
            param_hint="--out",
        )
    for entry in held:
        if entry.is_dir() and entry.name.startswith("Class"):
            shutil.rmtree(entry)
    try:
        path = write_dagm(
            out,
            n_per_class=n_per_class,
            size=size,
            defective_fraction=defective_fraction,
            seed=seed,
            classes=classes,
            test_fraction=test_fraction,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    n = n_per_class * classes
    typer.echo(f"wrote {n} images ({classes} classes x {n_per_class}, {size}x{size}, seed {seed}) to {path}")


def _fmt(xs, nd=4) -> str:
    return ", ".join(f"{x:.{nd}f}" for x in xs)


@app.command()
def stats(
    root: Path = typer.Argument(..., help="Dataset folder."),
    format: str = typer.Option(
        "auto", "--format", help="auto, dagm, kolektor, magnetic-tile, neu-seg, mvtec or generic."
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip bad samples (counted and listed) instead of stopping at the first."
    ),
    allow_unlabeled: bool = typer.Option(
        False, "--allow-unlabeled", help="Treat images without a mask as defect-free."
    ),
    mask_rule: str = typer.Option(
        "auto", "--mask-rule", help="How mask values become classes: auto (the format's rule), gt0, gt127 or ids."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts, defective fraction, image sizes, mean/std, class pixel frequencies and
    median-frequency-balancing weights."""
    console = Console()
    try:
        spec = load_dataset(
            root, format=format, skip_bad=skip_bad, allow_unlabeled=allow_unlabeled, mask_rule=mask_rule
        )
        st = dataset_stats(spec, skip_bad=skip_bad)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(st, indent=1))
        return
    t = Table(title=f"{root} ({st['format']})", show_header=False)
    t.add_row("images", str(st["images"]))
    t.add_row(
        "defective / defect-free",
        f"{st['defective']} / {st['defect_free']}  (fraction {st['defective_fraction']:.3f}, masks with defect pixels)",
    )
    if st["defective_by_layout"] is not None and st["defective_by_layout"] != st["defective"]:
        t.add_row(
            "defective by layout",
            f"{st['defective_by_layout']} (the folder/label says defective; some masks may be empty)",
        )
    if st["splits"] and list(st["splits"]) != ["-"]:
        t.add_row("dataset splits", ", ".join(f"{k} {v}" for k, v in st["splits"].items()))
    sz = st["sizes"]
    t.add_row(
        "image sizes (HxW)",
        f"{sz['distinct']} distinct; height min/median/max {sz['height']}, width "
        f"{sz['width']}; most common " + ", ".join(f"{h}x{w} ({c})" for h, w, c in sz["most_common"][:3]),
    )
    t.add_row("channels", str(st["channels"]))
    t.add_row("mean / std (0..1)", f"{_fmt(st['mean'])} / {_fmt(st['std'])}")
    console.print(t)
    if len(st["groups"]) > 1:
        g = Table(title="groups")
        g.add_column("group")
        g.add_column("images", justify="right")
        g.add_column("defective", justify="right")
        for name, v in st["groups"].items():
            g.add_row(name, str(v["images"]), str(v["defective"]))
        console.print(g)
    c = Table(title="classes")
    for col in ("id", "class", "pixels", "frequency", "median-freq weight"):
        c.add_column(col, justify="right" if col != "class" else "left")
    for i, name in enumerate(st["class_names"]):
        c.add_row(
            str(i),
            name,
            str(st["pixel_counts"][i]),
            f"{st['pixel_frequency'][i]:.6f}",
            f"{st['median_frequency_weights'][i]:.4f}",
        )
    console.print(c)
    if st["skipped"]:
        s = Table(title=f"skipped {len(st['skipped'])} bad sample(s)")
        s.add_column("path")
        s.add_column("reason")
        for p, r in st["skipped"]:
            s.add_row(p, r)
        console.print(s)


@app.command()
def split(
    root: Path = typer.Argument(..., help="Dataset folder."),
    format: str = typer.Option(
        "auto", "--format", help="auto, dagm, kolektor, magnetic-tile, neu-seg, mvtec or generic."
    ),
    fractions: tuple[float, float, float] = typer.Option(
        (0.7, 0.15, 0.15), "--fractions", help="Train, val and test fractions (as data.fractions)."
    ),
    seed: int = typer.Option(0, help="Split seed (train uses --seed)."),
    keep_parts: bool = typer.Option(
        True, "--keep-parts/--no-keep-parts", help="Keep each part's images in one split (as data.keep_parts)."
    ),
    allow_unlabeled: bool = typer.Option(
        False, "--allow-unlabeled", help="Treat images without a mask as defect-free."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the split here (a --split-file for train)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Print the split `train` would draw (images, defective images and parts per split, and what it cannot
    measure); with --out, write it as a split file."""
    console = Console()
    try:
        if not valid_fractions(fractions):  # what train's data.fractions accepts
            raise ValueError(f"--fractions: expected {FRACTIONS_RULE}, got {list(fractions)}")
        if out is not None:  # before the work: never over an input, a checkpoint, or silently
            claim_file(out, "--out", overwrite)
        spec = load_dataset(root, format=format, allow_unlabeled=allow_unlabeled)
        drawn = make_split(spec, fractions, seed, keep_parts)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    counts = split_counts(spec, drawn)
    t = Table(title=f"{root} ({spec.format}), seed {seed}")
    for col in ("split", "images", "defective", "parts"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for name, c in counts.items():
        t.add_row(name, str(c["images"]), str(c["defective"]), str(c["parts"]))
    console.print(t)
    for line in split_warnings(counts):
        console.print(f"[yellow]warning:[/yellow] {line}", markup=True, highlight=False)
    if out is not None:
        save_split(out, drawn, seed=seed, fractions=list(fractions), data=str(root), keep_parts=keep_parts)
        typer.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
