"""What a prediction produces and how it is written: the `Result` of one image, and `ResultWriter`, which puts
results into a folder as masks, overlays, results.jsonl and results.csv (predict, watch and the demo share it).
"""

from __future__ import annotations

import csv
import json
import os
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.io import write_png
from .viz import overlay

__all__ = ["Result", "ResultWriter", "read_records", "write_results"]


@dataclass
class Result:
    """One image's prediction.

    path: the file (None for in-memory arrays). size: native (H, W) (None when the file could not be read).
    prob: binary head: (H, W) float32 defect probability; multi-class head: (N, H, W) float32 class
        probabilities (softmax, class 0 = background). None on error.
    mask, defects, score, verdict: `localize.PostProcess` of `prob` (the one post-processing step, shared with
        evaluation): mask (H, W) uint8 class ids, exactly the pixels of `defects`; defects in native pixels
        {x1, y1, x2, y2 (exclusive), area, score, class}; score the image's defect score (highest defect
        probability); verdict "OK" (no defect), "NG" (any defect) or "ERROR" (unreadable: never passed as OK).
    gate_probability: the gate classifier's defect probability (None without a gate).
    error: why the image could not be processed (None when it was).
    seconds: wall time attributable to this image: its decode time plus an equal share of its chunk's
        processing (gate, segmenter, resizing, localization).
    image: the decoded image (H, W) or (H, W, 3) uint8 as read (for overlays); None on error.
    """

    path: str | None
    size: tuple[int, int] | None
    prob: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    defects: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = "OK"
    score: float | None = None
    gate_probability: float | None = None
    error: str | None = None
    seconds: float = 0.0
    image: np.ndarray | None = field(default=None, repr=False)

    def mask_image(self) -> np.ndarray:
        """The mask as predict writes it and serve sends it: (H, W) uint8, 0/255 for a binary head (a sigmoid or a
        2-class softmax), the class ids 0..N-1 for a multi-class one."""
        binary = self.prob is None or self.prob.ndim == 2 or self.prob.shape[0] == 2
        return self.mask * np.uint8(255) if binary else self.mask

    def to_json(self) -> dict[str, Any]:
        """The JSON record of results.jsonl (no arrays)."""
        h, w = self.size if self.size else (None, None)
        return {
            "path": self.path,
            "width": w,
            "height": h,
            "verdict": self.verdict,
            "score": None if self.score is None else round(self.score, 6),
            "defects": [{k: d[k] for k in ("x1", "y1", "x2", "y2", "area", "score", "class")} for d in self.defects],
            "gate_probability": self.gate_probability,
            "error": self.error,
            "seconds": round(self.seconds, 6),
        }


_CSV_FIELDS = (
    "path",
    "width",
    "height",
    "verdict",
    "gate_probability",
    "defect",
    "x1",
    "y1",
    "x2",
    "y2",
    "area",
    "score",
    "class",
    "error",
)


class ResultWriter:
    """Write predictions into `out_dir` as they come.

    Per readable image: `<stem>_mask.png` (binary heads, sigmoid or 2-class softmax: 0/255; multi-class heads:
    the class ids 0..N-1 as gray values) and, unless `overlays=False`, `<stem>_overlay.png` (`viz.overlay`:
    tinted defects, boxes, areas).
    When two inputs share a stem, later ones get `<stem>_2`, `<stem>_3`, ... (results.jsonl names the files).
    `results.jsonl`: one object per image (`Result.to_json()` plus "mask" and "overlay" file names).
    `results.csv`: one row per defect; an image with no defect (OK, or an error) gets one row with empty
    defect columns, so every input appears. Counters: n_images, n_ok, n_ng, n_errors, n_defects, errors.

    The two files always agree, and list only images whose mask and overlay are on disk: records wait in memory
    until `flush` (every FLUSH_EVERY images, and at close) has finished the image writes, then go to both files
    together (fsync). A fresh folder holds `INCOMPLETE.txt` until `close(complete=True)`: a run killed or stopped
    part-way is marked. Appending (watch) rebuilds results.csv from results.jsonl first, so a crash between the
    two files cannot leave them disagreeing.
    """

    FLUSH_EVERY = 16

    def __init__(
        self,
        out_dir: str | Path,
        overlays: bool = True,
        masks: bool = True,
        overwrite: bool = False,
        background: bool = True,
        append: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        # append (folder watching): continue the results of an earlier run in out_dir (`previous`: its records)
        previous = read_records(self.out_dir / "results.jsonl") if append else []
        if not previous:
            _claim_output(self.out_dir, overwrite)
        self._marker = None if append else self.out_dir / "INCOMPLETE.txt"
        if self._marker is not None:
            self._marker.write_text(
                "this prediction has not finished, or was stopped part-way: results.jsonl and results.csv list the "
                "images inspected so far\n"
            )
        self.previous = previous  # the earlier run's records, in order
        self.overlays, self.masks = overlays, masks
        # background: overlays are drawn and PNGs encoded by one worker thread (zlib and OpenCV release the GIL),
        # beside the network; at most MAX_PENDING images wait, and a failed write is raised at the next call.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="defectseg-write") if background else None
        self._pending: deque = deque()
        if previous and not (self.out_dir / "results.jsonl").read_bytes().endswith(b"\n"):
            # a crash mid-line: keep the whole records only, so the next one starts on its own line
            (self.out_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in previous))
        self._jsonl = open(self.out_dir / "results.jsonl", "a" if previous else "w")
        self._csv_file = open(self.out_dir / "results.csv", "w", newline="")  # rebuilt from the records
        self._csv = csv.DictWriter(self._csv_file, fieldnames=_CSV_FIELDS)
        self._csv.writeheader()
        self._csv.writerows(row for rec in previous for row in _csv_rows(rec))
        self._waiting: list[dict[str, Any]] = []  # records whose images are still being written
        self._stems: dict[str, int] = {}
        for rec in previous:  # later images with a stem used before get the next free suffix
            if rec.get("path"):
                self._stem(rec["path"])
        self.n_images = self.n_ok = self.n_ng = self.n_errors = self.n_defects = 0
        self.errors: list[tuple[str, str]] = []

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close(complete=kind is None)

    MAX_PENDING = 4

    def close(self, complete: bool = False) -> None:
        """Write what is pending and close; `complete`: every input was written (INCOMPLETE.txt goes)."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._jsonl.close()
            self._csv_file.close()
        if complete and self._marker is not None:
            self._marker.unlink(missing_ok=True)

    def _stem(self, path: str | None) -> str:
        stem = Path(path).stem if path else f"image{self.n_images:06d}"
        n = self._stems.get(stem, 0) + 1
        self._stems[stem] = n
        return stem if n == 1 else f"{stem}_{n}"

    def write(self, r: Result, **extra: Any) -> None:
        """Write one result; `extra` entries go into its results.jsonl record (watch: the file version read)."""
        self.n_images += 1
        rec = r.to_json()
        rec["mask"] = rec["overlay"] = None
        rec.update(extra)
        if r.error is not None:
            self.n_errors += 1
            self.errors.append((str(r.path), r.error))
        else:
            self.n_ng += r.verdict == "NG"
            self.n_ok += r.verdict == "OK"
            self.n_defects += len(r.defects)
            stem = self._stem(r.path)
            if self.masks and r.mask is not None:
                rec["mask"] = f"{stem}_mask.png"
            if self.overlays and r.image is not None and r.mask is not None:
                rec["overlay"] = f"{stem}_overlay.png"
            if rec["mask"] or rec["overlay"]:
                self._submit(r, rec["mask"], rec["overlay"])
        self._waiting.append(rec)
        if len(self._waiting) >= self.FLUSH_EVERY:
            self.flush()

    def _drain(self) -> None:
        """Wait for every pending image write; a failed one raises here."""
        while self._pending:
            self._pending.popleft().result()

    def _submit(self, r: Result, mask_name: str | None, overlay_name: str | None) -> None:
        if self._pool is None:
            self._write_images(r, mask_name, overlay_name)
            return
        self._pending.append(self._pool.submit(self._write_images, r, mask_name, overlay_name))
        while len(self._pending) > self.MAX_PENDING or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()  # raises a failed write here

    def _write_images(self, r: Result, mask_name: str | None, overlay_name: str | None) -> None:
        if mask_name:
            write_png(self.out_dir / mask_name, r.mask_image())
        if overlay_name:
            write_png(self.out_dir / overlay_name, overlay(r.image, r.mask, r.defects))

    def flush(self) -> None:
        """Finish the pending image writes, then put their records into both files on disk (fsync): what is
        listed exists, and the two files list the same images."""
        self._drain()
        waiting, self._waiting = self._waiting, []
        self._jsonl.write("".join(json.dumps(rec) + "\n" for rec in waiting))
        self._csv.writerows(row for rec in waiting for row in _csv_rows(rec))
        for f in (self._jsonl, self._csv_file):
            f.flush()
            os.fsync(f.fileno())


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl ([] when there is none); a torn last line (a crash mid-write) is dropped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _csv_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The results.csv rows of one results.jsonl record: one per defect, or one with empty defect columns."""
    gate = rec.get("gate_probability")
    base = {
        "path": _csv_safe(rec.get("path")),
        "width": rec.get("width"),
        "height": rec.get("height"),
        "verdict": rec.get("verdict"),
        "gate_probability": "" if gate is None else f"{gate:.6f}",
        "error": _csv_safe(rec.get("error") or ""),
    }
    return [
        {
            **base,
            "defect": i,
            **{k: d[k] for k in ("x1", "y1", "x2", "y2", "area", "class")},
            "score": f"{d['score']:.6f}",
        }
        for i, d in enumerate(rec.get("defects") or [])
    ] or [base]


def _csv_safe(text: str | None) -> str | None:
    """A cell a spreadsheet shows as text: one starting with = + - @ or a tab/CR (a file named "=1+1.png")
    would be run as a formula, so it gets a leading apostrophe (the OWASP CSV-injection rule)."""
    return "'" + text if text and text[0] in "=+-@\t\r" else text


def _claim_output(out_dir: Path, overwrite: bool) -> None:
    """Create `out_dir`, and refuse one that already holds files unless `overwrite`; then the previous run's
    results.jsonl/csv and the masks and overlays it lists are removed (nothing else), so no stale file stays."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"cannot create the output folder {out_dir}: {exc.strerror}; choose a writable --out"
        ) from None
    held = sorted(out_dir.iterdir())
    if held and not overwrite:
        raise ValueError(
            f"output folder {out_dir} is not empty ({len(held)} entries, e.g. {held[0].name}); "
            "choose a new --out, or pass --overwrite to replace a previous prediction there"
        )
    if held:
        for rec in read_records(out_dir / "results.jsonl"):
            for key in ("mask", "overlay"):
                if rec.get(key):
                    (out_dir / Path(rec[key]).name).unlink(missing_ok=True)
    for name in ("results.jsonl", "results.csv", "INCOMPLETE.txt"):
        (out_dir / name).unlink(missing_ok=True)


def write_results(
    results: Iterable[Result], out_dir: str | Path, overlays: bool = True, overwrite: bool = False
) -> int:
    """Write every result with a `ResultWriter`; returns the number of NG images."""
    with ResultWriter(out_dir, overlays=overlays, overwrite=overwrite) as w:
        for r in results:
            w.write(r)
    return w.n_ng
