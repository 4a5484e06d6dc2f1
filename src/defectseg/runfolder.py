"""The run folder's files besides checkpoints: the lock that keeps one training per folder, metrics.csv, report.md."""

from __future__ import annotations

import csv
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import config as C
from .data import DatasetSpec

__all__ = ["RUN_FILES", "RunLock", "append_csv", "drop_rows_after", "monitor_of", "write_report"]

RUN_FILES = ("config.yaml", "split.json", "metrics.csv", "best.pt", "last.pt", "curves.png", "report.md")


class RunLock:
    """An exclusive lock on a run folder for the life of one training: the file `.lock` holding "pid host".

    Two trainings into one folder would interleave metrics.csv and mix one's best.pt with the other's last.pt,
    so a second is refused while the first's process lives. A lock left by a dead process (kill -9, a crash)
    on this host is stale and taken over; one from another host (a shared drive) cannot be checked and is
    refused with the file to delete. A lock of this very process is taken over too (a failed start in the
    same Python session leaves one behind).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.path.read_text().split() if self.path.is_file() else []
                if self._stale(owner):
                    self.path.unlink(missing_ok=True)
                    continue
                raise ValueError(
                    f"run folder {self.path.parent} is in use by another training (pid "
                    f"{' on '.join(owner) or '?'}); pick another --name, or wait for it to finish "
                    f"(if no training runs there, delete {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return
        raise ValueError(f"cannot lock {self.path.parent}: another training took it at the same moment")

    @staticmethod
    def _stale(owner: list[str]) -> bool:
        if len(owner) != 2 or not owner[0].isdigit():
            return True  # torn or foreign content: no live owner can be named
        pid, host = int(owner[0]), owner[1]
        if host != socket.gethostname():
            return False
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def drop_rows_after(path: Path, epochs: int) -> None:
    """Keep the metrics.csv rows of the first `epochs` epochs: a run killed after appending an epoch's row but
    before its last.pt was written redoes that epoch on resume, and must not list it twice."""
    if not path.exists():
        return
    rows = list(csv.DictReader(open(path, newline="")))
    keep = [r for r in rows if not str(r.get("epoch", "")).isdigit() or int(r["epoch"]) <= epochs]
    if len(keep) != len(rows):
        path.unlink()
        for r in keep:
            append_csv(path, {k: v for k, v in r.items() if v != ""})


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Add a row; the header is the union of all rows' keys (validation columns appear at the first
    evaluated epoch, which need not be the first), so the file is rewritten whole: it is small."""
    rows: list[dict[str, Any]] = list(csv.DictReader(open(path, newline=""))) if path.exists() else []
    rows.append(row)
    header: list[str] = []
    for r in rows:
        header += [k for k in r if k not in header]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in header} for r in rows)
    os.replace(tmp, path)


def monitor_of(cfg: C.RunConfig) -> str:
    """The validation metric that picks best.pt: `train.monitor` for a segmenter; a classifier has only image
    metrics, so image AUROC."""
    return cfg.train.monitor if cfg.train.task == "segment" else "image_auroc"


def write_report(
    path: Path,
    cfg: C.RunConfig,
    spec: DatasetSpec,
    used: dict[str, int],
    metrics: dict[str, float],
    best_epoch: int,
    seconds: float,
    threshold_note: str = "",
    skipped: Sequence[tuple[Any, str]] = (),
    stopped: str = "",
    fit: str = "",
) -> None:
    """report.md: the run's settings, the images each split used (skipped files listed), the test metrics.
    stopped: why the training ended before its length (Ctrl-C), said at the top. fit: what an anomaly fit did (in
    place of the optimiser and epochs, which it has none of)."""
    how = (
        "images resized to the training size, as the gate sees them"
        if cfg.train.task == "classify"
        else "each image at its native size through the predict path: threshold, min_area and connected "
        "components of `localize.PostProcess`"
    )
    length = f"{cfg.train.iterations} steps" if cfg.train.iterations else f"{cfg.train.epochs} epochs"
    if cfg.model.freeze_encoder_epochs:
        n = cfg.model.freeze_encoder_epochs
        length += f" (encoder frozen in the first {n} epoch{'s' if n > 1 else ''})"
    encoder_lr = f" (encoder x{cfg.train.encoder_lr_scale:g})" if cfg.train.encoder_lr_scale != 1 else ""
    lines = [
        f"# Run `{cfg.name}`",
        "",
        *([f"- **stopped early**: {stopped}"] if stopped else []),
        f"- model: `{cfg.model.name}` {cfg.model.options or ''}",
        f"- data: `{cfg.data.root}` (format {spec.format}, classes {spec.class_names}), "
        f"size {'x'.join(map(str, C.resize_hw(cfg.data)))}, augment {cfg.data.augment}",
        f"- split: train {used.get('train', 0)} / val {used.get('val', 0)} / test {used.get('test', 0)} images "
        f"used (split.json{'; ' + str(len(skipped)) + ' files skipped, listed below' if skipped else ''})",
        f"- fit: {fit}"
        if fit
        else f"- loss {cfg.train.loss}, {cfg.train.optimizer} lr {cfg.train.lr}{encoder_lr}, schedule "
        f"{cfg.train.schedule}, {length}, batch {cfg.train.batch_size}, seed {cfg.train.seed}",
        f"- post-processing: threshold {cfg.infer.threshold:.4g} ({cfg.infer.threshold_from}"
        f"{': ' + threshold_note if threshold_note else ''}), min_area "
        f"{cfg.infer.min_area}, connectivity "
        f"{cfg.infer.connectivity}, {'tiles of ' + str(cfg.infer.tile) if cfg.infer.tile else 'resize mode'}",
        f"- wall time {seconds:.0f} s"
        if fit
        else f"- best epoch (by validation {monitor_of(cfg)}): {best_epoch}; wall time {seconds:.0f} s",
        "",
        f"## Test split (whole split, defect-free images included; {how})",
        "",
        "What each number means: docs/metrics.md.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    if skipped:
        lines += ["", f"## Skipped files ({len(skipped)})", ""]
        lines += [f"- `{p}`: {why}" for p, why in skipped]
    path.write_text("\n".join(lines) + "\n")
