"""End-to-end `predict` throughput on a folder of PNGs against the network alone, in one run.

What a production line sees is the whole pipeline: decode, preprocess, the network, post-processing, and writing
the mask, the overlay and the records. This times, for each batch size, on the same images and the same loaded model:
- network: `predictor.segmenter.logits` on a ready uint8 batch (what `defectseg benchmark` measures);
- serial: `Predictor.predict_paths` + `ResultWriter` as `defectseg predict` runs them, one step after the other;
- overlapped: the same with reading, post-processing and writing in threads beside the network (the default);
- overlapped, no overlays: `predict --no-overlays` (masks and records only).

The images are smooth gray textures with a few dark blobs, written once as PNGs; the model has random weights and
the threshold 0.9, so most images are OK, as on a line (the post-processing cost of an OK image is the common case).

    OMP_NUM_THREADS=2 python benchmarks/pipeline.py --model cheapnet-m --size 512 --images 48 --batch 1,8 \
        --threads 2 --out benchmarks/results/pipeline-512.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from defectseg import config as C
from defectseg.checkpoint import save_checkpoint
from defectseg.data.io import find_images, write_png
from defectseg.models import create_model
from defectseg.outputs import ResultWriter
from defectseg.predictor import Predictor, model_input


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.normal(128, 40, (size, size)).astype(np.float32), (0, 0), 3)
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, size, 2)
            cv2.circle(img, (int(x), int(y)), int(rng.integers(2, 12)), 40, -1)
        write_png(folder / f"img{i:04d}.png", np.clip(img, 0, 255).astype(np.uint8))
    return find_images([folder])[0]


def checkpoint(path: Path, model: str, size: int) -> Path:
    cfg = C.RunConfig()
    cfg.model.name, cfg.data.size, cfg.infer.threshold = model, size, 0.9
    torch.manual_seed(0)
    net = create_model(model, in_channels=1, num_classes=1)
    return save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "num_classes": 1,
            "class_names": ["background", "defect"],
            "task": "segment",
            "model": net.state_dict(),
        },
    )


def end_to_end(pred: Predictor, paths: list[Path], out: Path, overlap: bool, overlays: bool) -> tuple[float, int]:
    pred.overlap = overlap
    t0 = time.perf_counter()
    with ResultWriter(out, overlays=overlays, overwrite=True, background=overlap) as w:
        for r in pred.predict_paths(paths):
            w.write(r)
    return len(paths) / (time.perf_counter() - t0), w.n_ng


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cheapnet-m")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lines = [
        f"# predict end to end vs the network alone: {a.model}, {a.images} PNGs of {a.size}x{a.size}",
        "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- {time.strftime('%Y-%m-%d %H:%M')}, threads {a.threads}, "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
    ]
    rows = [
        "| batch | backend | network img/s | serial img/s | overlapped img/s | overlapped, no overlays img/s "
        "| overlapped / network | NG images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="defectseg-pipeline-") as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp / "images", a.images, a.size)
        ckpt = checkpoint(tmp / "model.pt", a.model, a.size)
        for b in [int(v) for v in a.batch.split(",")]:
            pred = Predictor.from_checkpoint(ckpt, device="cpu", backend=a.backend, batch_size=b, threads=a.threads)
            net = pred.segmenter
            x = np.stack([model_input(net, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in paths[:b]])
            for _ in range(3):
                net.logits(x)
            times = []
            for _ in range(max(5, 40 // b)):
                t0 = time.perf_counter()
                net.logits(x)
                times.append(time.perf_counter() - t0)
            network = b / statistics.median(times)
            end_to_end(pred, paths[: 2 * b], tmp / "warm", True, True)  # warm-up: threads, allocator
            serial, _ = end_to_end(pred, paths, tmp / "serial", False, True)
            overlapped, ng = end_to_end(pred, paths, tmp / "overlapped", True, True)
            no_overlays, _ = end_to_end(pred, paths, tmp / "no-overlays", True, False)
            rows.append(
                f"| {b} | {net.backend} | {network:.1f} | {serial:.1f} | {overlapped:.1f} | "
                f"{no_overlays:.1f} | {overlapped / network:.0%} | {ng} / {a.images} |"
            )
            print(rows[-1], flush=True)
    lines += rows + ["", f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}", ""]
    text = "\n".join(lines)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
