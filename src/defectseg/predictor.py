"""The Predictor: a checkpoint (.pt or .onnx) -> per-image defect probability, class mask and defect records.

`Predictor.from_checkpoint(path)` loads a training checkpoint (`.pt`, PyTorch on CPU or CUDA) or an ONNX file
written by `defectseg export` (`.onnx`, ONNX Runtime; the config travels in its metadata, so the `.pt` is not
needed). Every image is read at its native size and every result (probabilities, mask, defect boxes) is in
the native image's pixels.

How an image reaches the model (the policy):

- **resize** (default: `tile=None` with no `infer.tile` in the checkpoint's config, or `tile=0`): exactly as
  in training. The whole image is resized to the training resolution (`config.resize_hw`: `data.size` squared,
  or `data.shape` for tall or wide images) with the one resize of training (`data.dataset.resize_image`: area
  when shrinking both sides, bilinear otherwise), the model runs once, and the probability map is resized back
  to the native size by the same rule. Any image size works; a 20000 x 20000 image is
  downscaled, never fed whole. Fine defects on very large images may vanish at the training resolution:
  use tile mode for those.
- **tile** (`tile=N`): native resolution. The image is padded (mirror padding) to a multiple of the model's
  `size_multiple` and cut into N x N windows (N rounded down to that multiple) overlapping by `tile_overlap`
  pixels, with window origins on multiples of `size_multiple` so overlapping windows share the network's
  downsampling grid. Window probabilities are blended by a weighted average whose weight ramps linearly from
  the window's edges over `tile_overlap` pixels (no visible seams), then cropped back to the image.
  Images no larger than N run as one padded window. Every forward pass sees at most N x N pixels, whatever
  the image size. Meant for models trained at native scale (on crops, or on images already at `data.size`):
  the model sees pixels at the scale of the file, not at the training resize.

A gate (cascade, `gate=` a classifier checkpoint with task "classify", or a model of good parts fitted with
task "anomaly", whose image score is its map's maximum) always sees the whole image resized to its own training
resolution (`Gate`); images it scores below `gate_threshold` (by default the threshold stored
with the gate) get an all-zero probability map, an empty mask and no defects without running the segmenter. In
reference mode (the checkpoint's `data.reference` is set) the model input is the image and a defect-free
reference of the same product, resized to the image's size, concatenated on the channel axis (image first).

Memory stays bounded for folders of any size and for very large images: `predict_paths` reads images in
chunks of at most `batch_size` images and `CHUNK_PIXELS` pixels, the model only ever sees one batch of
training-size inputs or tiles, and per image the full-resolution float32 arrays are the probability map
(one per class for multi-class heads) plus, in tile mode, one weight map.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, softmax

from . import config as C
from .backends import Net, classifier_probabilities, load_net
from .data.dataset import resize_image
from .data.io import as_channels, read_image
from .localize import PostProcess
from .outputs import Result

__all__ = ["CHUNK_PIXELS", "Gate", "Predictor", "References", "Result", "model_input", "probabilities"]

# A chunk of images in flight holds (for each image) the decoded image, its probability map and mask at native
# size; capping its pixels keeps a folder of huge images from holding batch_size of them at once.
CHUNK_PIXELS = 64 * 2**20


# ----------------------------------------------------------------------------- array helpers
def _chw(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Mirror-pad (H, W[, C]) at the bottom/right to (h, w): zeros would draw an artificial edge the model
    could take for a defect."""
    ph, pw = h - a.shape[0], w - a.shape[1]
    if ph == 0 and pw == 0:
        return a
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, mode="symmetric")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def padded_chw(a: np.ndarray, m: int) -> np.ndarray:
    """(H, W[, C]) -> (C, H', W'), mirror-padded at the bottom/right to multiples of m: an image (resized, or whole
    at native size) as a network takes it."""
    return _chw(_pad_to(a, _round_up(a.shape[0], m), _round_up(a.shape[1], m)))


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins covering [0, length): every `stride`, the last one flush with the end."""
    if length <= window:
        return [0]
    out = list(range(0, length - window, stride))
    out.append(length - window)
    return out


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D blending weight: 1 inside, falling linearly to 1/(overlap+1) at both ends; never 0."""
    if overlap <= 0:
        return np.ones(n, np.float32)
    i = np.arange(n, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, n - i) / (overlap + 1)).astype(np.float32)


def probabilities(logits: np.ndarray, image_head: bool = False) -> np.ndarray:
    """(B, K, h, w) logits -> sigmoid (K == 1) or softmax over K, float32. With an image head the last of K + 1
    channels is the image logit, and no pixel is more likely a defect than its image is defective: the defect
    probability (1 - background) is capped at the image's probability, background taking the rest. A defective
    image the head is sure of keeps its map; on an image the head calls good every pixel falls below the threshold.
    So the one post-processing step, its thresholds and the image score (the highest defect probability, at most the
    image's) all see the image head, with nothing downstream to change. (Multiplying instead of capping lowered the
    defect pixels of every image the head was less than sure of: on magnetic tile, seed 0, test defect IoU 0.609 and
    pixel AP 0.838 multiplied against 0.626 and 0.858 capped, image AUROC 0.986 and 0.981; docs/results.md.)"""
    image = None
    if image_head:
        image = expit(logits[:, -1:].mean((2, 3), keepdims=True)).astype(np.float32)  # (B, 1, 1, 1)
        logits = logits[:, :-1]
    if logits.shape[1] == 1:
        p = expit(logits).astype(np.float32, copy=False)
        return p if image is None else np.minimum(p, image)
    p = softmax(logits, axis=1).astype(np.float32, copy=False)
    if image is not None:
        defect = 1.0 - p[:, :1]
        p[:, 1:] *= np.minimum(1.0, image / np.maximum(defect, 1e-12))  # scale the classes down to the cap
        p[:, 0] = 1.0 - p[:, 1:].sum(1)
    return p


def _resize_prob(p: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(K, h, w) probabilities at model resolution -> (H, W) for K == 1, else (K, H, W), in native pixels."""
    if p.shape[0] == 1:
        return np.ascontiguousarray(resize_image(p[0], hw), dtype=np.float32)
    out = np.empty((p.shape[0], *hw), np.float32)
    for k in range(p.shape[0]):  # one plane at a time: no (H, W, K) interleaved copy
        out[k] = resize_image(p[k], hw)
    return out


# ----------------------------------------------------------------------------- network inputs and the gate
class References:
    """One defect-free reference image (reference-mode models), in a net's channels at an image's native size,
    cached per (channels, size): a folder of mixed sizes keeps at most a few copies."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def at(self, channels: int, hw: tuple[int, int]) -> np.ndarray:
        key = (channels, *hw)
        ref = self._cache.get(key)
        if ref is None:
            if len(self._cache) > 4:
                self._cache.clear()
            ref = self._cache[key] = resize_image(as_channels(self.image, channels), hw)
        return ref


def model_input(net: Net, image: np.ndarray, references: References | None = None) -> np.ndarray:
    """uint8 (C_in, h, w): image (+ its reference) resized to the net's resolution (`Net.input_hw`, the training
    size) and padded to its size multiple: what resize mode and the gate feed a network."""
    hw = net.input_hw
    parts = [resize_image(as_channels(image, net.image_channels), hw)]
    if net.uses_reference:
        assert references is not None, "the Predictor checks that reference-mode nets get a reference"
        parts.append(resize_image(references.at(net.image_channels, image.shape[:2]), hw))
    return np.concatenate([padded_chw(p, net.size_multiple) for p in parts], axis=0)


class Gate:
    """A classifier or a model of good parts in front of the segmenter (the cascade): it sees each whole image
    resized to its own training resolution and calls it defective at `threshold`, by default the one stored in its
    own checkpoint (a model of good parts: its pixel threshold, so it calls an image as its own verdict does).
    Evaluating a classifier goes through here too, so its figures are those of the gate."""

    def __init__(self, net: Net, threshold: float | None = None) -> None:
        if not net.scores_images:
            raise ValueError(
                f"gate {net.source} is a {net.task} model; the gate must be a classifier trained with "
                "`defectseg train --task classify` or a model of good parts (`--task anomaly`)"
            )
        threshold = net.config.infer.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"gate_threshold={threshold} is not a probability; pass a value in [0, 1]")
        self.net, self.threshold = net, float(threshold)

    def probabilities(
        self, images: Sequence[np.ndarray], references: References | None = None, batch_size: int = 8
    ) -> np.ndarray:
        """(N,) float64 defect probabilities of uint8 (H, W[, 3]) images, in batches."""
        out = [
            classifier_probabilities(
                self.net, np.stack([model_input(self.net, a, references) for a in images[i : i + batch_size]])
            )
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0)


# ----------------------------------------------------------------------------- predictor
@dataclass
class _Item:
    """An image in flight: index in the chunk, the decoded image and its decode time."""

    path: str | None
    image: np.ndarray | None
    read_seconds: float = 0.0
    error: str | None = None


class Predictor:
    """Batched, streaming inference with one segmentation network (optionally gated by a classifier).

    Build it with `Predictor.from_checkpoint`; see the module docstring for the resize/tile policy.
    """

    def __init__(
        self,
        segmenter: Net,
        infer: C.InferConfig,
        batch_size: int = 8,
        tile: int | None = None,
        gate: Net | None = None,
        gate_threshold: float | None = None,
        reference: np.ndarray | None = None,
        overlap: bool = True,
    ) -> None:
        """gate: a classifier net in front of the segmenter, deciding at `gate_threshold` (None: the threshold
        stored with the gate, `Gate`). infer: the post-processing settings (a checked `InferConfig`)."""
        if segmenter.task != "segment":
            raise ValueError(
                f"{segmenter.source} is a {segmenter.task} model; predict needs a segmentation "
                "checkpoint (pass a classifier as the gate: --gate)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.segmenter, self.gate = segmenter, gate
        self._gate = None if gate is None else Gate(gate, gate_threshold)
        self.overlap = overlap  # predict_paths: read and post-process in threads beside the network
        self.infer = infer
        self.post = PostProcess.from_config(infer)
        self.batch_size = batch_size
        nets = [segmenter] + ([gate] if gate is not None else [])
        needs_ref = [n for n in nets if n.uses_reference]
        if needs_ref and reference is None:
            trained = needs_ref[0].config.data.reference
            raise ValueError(
                f"{needs_ref[0].source} is a reference-mode model (data.reference={trained!r}): it "
                "compares each image with a defect-free reference of the same product; pass "
                "--reference REF.png (reference=...)"
            )
        if reference is not None and not needs_ref:
            raise ValueError(
                "a reference image was given but the model was not trained in reference mode "
                "(data.reference unset); drop --reference"
            )
        self.use_reference(reference)
        m = segmenter.size_multiple
        if tile:
            if segmenter.fixed_hw is not None:
                raise ValueError(
                    f"tile mode runs windows of any size, but {segmenter.source} was exported with a "
                    f"fixed {segmenter.fixed_hw[0]}x{segmenter.fixed_hw[1]} input; re-export with "
                    "`defectseg export --dynamic` or use resize mode (no --tile)"
                )
            if tile < m:
                raise ValueError(f"tile={tile} is smaller than the model's size multiple {m}; use --tile >= {m}")
            self.tile: int | None = (tile // m) * m  # rounded down: a forward never exceeds `tile` pixels
            if not 0 <= infer.tile_overlap < self.tile:
                raise ValueError(
                    f"tile_overlap={infer.tile_overlap} must be >= 0 and below the tile size "
                    f"{self.tile}; pass a larger --tile or a smaller --tile-overlap (e.g. "
                    f"{self.tile // 4})"
                )
        else:
            self.tile = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        backend: str = "auto",
        dtype: str | None = None,
        channels_last: bool = False,
        batch_size: int = 8,
        tile: int | None = None,
        gate: str | Path | None = None,
        gate_threshold: float | None = None,
        reference: str | Path | None = None,
        threshold: float | None = None,
        min_area: int | None = None,
        connectivity: int | None = None,
        score: str | None = None,
        tile_overlap: int | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """Load a segmenter from a .pt checkpoint (torch backend) or an exported .onnx (onnxruntime backend).

        device: auto | cpu | cuda | cuda:N. dtype: None (float32) | "bf16" | "fp16" autocast (torch on CUDA);
        channels_last: torch on CUDA only (ignored on the CPU). tile: None = the checkpoint's `infer.tile`
        (unset: resize mode), 0 = resize mode, N = tile mode with N x N windows. gate: a classifier or
        good-parts (task anomaly) checkpoint (.pt or .onnx); images it scores below `gate_threshold` (default: the
        gate checkpoint's own threshold) are OK without segmentation.
        reference: a defect-free image for reference-mode models. threshold/min_area/connectivity/score/
        tile_overlap override the checkpoint's `infer` section. threads: ONNX Runtime intra-op threads.
        """
        seg = load_net(path, device, backend, dtype, channels_last, threads)
        gate_net = None
        if gate is not None:
            gate_net = load_net(gate, device, "auto", dtype, channels_last, threads)
        infer = seg.config.infer.overridden(
            threshold=threshold, min_area=min_area, connectivity=connectivity, score=score, tile_overlap=tile_overlap
        )
        ref = None
        if reference is not None:
            ref = read_image(reference)  # channels converted per network later
        return cls(
            seg,
            infer,
            batch_size=batch_size,
            tile=infer.tile if tile is None else tile,
            gate=gate_net,
            gate_threshold=gate_threshold,
            reference=ref,
        )

    def use_reference(self, reference: np.ndarray | None) -> None:
        """Compare the next images with this defect-free reference (reference-mode models)."""
        self.reference = reference
        self._references = None if reference is None else References(reference)

    @property
    def gate_threshold(self) -> float | None:
        """The gate's probability below which an image is OK (None without a gate)."""
        return None if self._gate is None else self._gate.threshold

    @property
    def mode(self) -> str:
        """ "resize" or "tile"."""
        return "tile" if self.tile else "resize"

    @property
    def class_names(self) -> list[str]:
        return self.segmenter.class_names

    # ---------------------------------------------------------------- public API
    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[Result]:
        """Predict in-memory uint8 images, (H, W) gray or (H, W, 3) RGB, in batches; one Result each."""
        items = []
        for i, a in enumerate(images):
            a = np.asarray(a)
            if a.dtype != np.uint8:
                raise ValueError(
                    f"image #{i} has dtype {a.dtype}; pass uint8 arrays (read files with defectseg.data.io.read_image)"
                )
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            elif a.ndim == 3 and a.shape[2] == 4:
                a = a[:, :, :3]  # alpha carries no surface information
            if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or min(a.shape[:2]) < 1:
                raise ValueError(f"image #{i} has shape {a.shape}; pass (H, W) gray or (H, W, 3) RGB arrays")
            items.append(_Item(None, a))
        out: list[Result] = []
        for chunk in self._chunks(iter(items)):
            out.extend(self._run_chunk(chunk))
        return out

    def predict(self, image: np.ndarray) -> Result:
        """One in-memory image (see `predict_arrays`)."""
        return self.predict_arrays([image])[0]

    def predict_paths(self, paths: Iterable[str | Path]) -> Iterator[Result]:
        """Stream results for image files in order, reading at most one chunk (batch_size images,
        CHUNK_PIXELS pixels) at a time. An unreadable file yields a Result with `error` set, never raises."""

        def read() -> Iterator[_Item]:
            for p in paths:
                t0 = time.perf_counter()
                try:
                    img = read_image(p)
                except Exception as exc:  # any decoder failure is this file's problem, not the batch's
                    msg = str(exc) if isinstance(exc, ValueError) else f"{p}: {type(exc).__name__}: {exc}"
                    yield _Item(str(p), None, time.perf_counter() - t0, msg)
                    continue
                if min(img.shape[:2]) < 1:
                    yield _Item(str(p), None, time.perf_counter() - t0, f"{p}: empty image")
                    continue
                yield _Item(str(p), img, time.perf_counter() - t0)

        chunks = self._chunks(read())
        if not self.overlap:
            for chunk in chunks:
                yield from self._finish_chunk(*self._infer_chunk(chunk))
            return
        # Overlapped: a reader thread decodes the next chunk and a worker post-processes the previous one while
        # this thread runs the network (decoders, OpenCV and ONNX Runtime release the GIL). At most three chunks
        # are in memory: one being read, one in the network, one being post-processed.
        with ThreadPoolExecutor(1, thread_name_prefix="defectseg-post") as post:
            pending = None
            for chunk in _read_ahead(chunks):
                inferred = self._infer_chunk(chunk)
                if pending is not None:
                    yield from pending.result()
                pending = post.submit(self._finish_chunk, *inferred)
            if pending is not None:
                yield from pending.result()

    # ---------------------------------------------------------------- internals
    def _chunks(self, items: Iterator[_Item]) -> Iterator[list[_Item]]:
        chunk: list[_Item] = []
        pixels = 0
        for it in items:
            chunk.append(it)
            if it.image is not None:
                pixels += it.image.shape[0] * it.image.shape[1]
            if sum(c.image is not None for c in chunk) >= self.batch_size or pixels >= CHUNK_PIXELS:
                yield chunk
                chunk, pixels = [], 0
        if chunk:
            yield chunk

    def _segment_resize(self, images: list[np.ndarray]) -> Iterator[np.ndarray]:
        """Native-size probability maps, one per image, in order (resize mode)."""
        hw = self.segmenter.input_hw
        for i in range(0, len(images), self.batch_size):
            part = images[i : i + self.batch_size]
            batch = np.stack([model_input(self.segmenter, a, self._references) for a in part])
            logits = self.segmenter.logits(batch)[:, :, : hw[0], : hw[1]]  # drop the multiple-padding
            probs = probabilities(logits, self.segmenter.image_head)
            for a, p in zip(part, probs):
                yield _resize_prob(p, a.shape[:2])

    def _tile_windows(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(y0, x0, h, w) windows covering the image padded to the size multiple."""
        assert self.tile is not None
        m = self.segmenter.size_multiple
        hp, wp = _round_up(image.shape[0], m), _round_up(image.shape[1], m)
        th, tw = min(self.tile, hp), min(self.tile, wp)

        def stride(t: int) -> int:  # window origins stay on the model's downsampling grid
            return max(m, ((t - self.infer.tile_overlap) // m) * m)

        return [(y, x, th, tw) for y in _starts(hp, th, stride(th)) for x in _starts(wp, tw, stride(tw))]

    def _window_input(self, image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
        net = self.segmenter
        parts = [as_channels(image[y : y + h, x : x + w], net.image_channels)]
        if net.uses_reference:
            parts.append(self._references.at(net.image_channels, image.shape[:2])[y : y + h, x : x + w])
        return np.concatenate([_chw(_pad_to(p, h, w)) for p in parts], axis=0)

    def _segment_tiles(self, images: list[np.ndarray]) -> Iterator[np.ndarray]:
        """Native-size probability maps, one per image, in order (tile mode).

        Windows of consecutive images with the same shape share batches; at most one batch of windows and the
        accumulators of the images it touches are alive at a time.
        """
        k = self.segmenter.num_classes
        queue = [(j, win) for j, a in enumerate(images) for win in self._tile_windows(a)]
        remaining = [0] * len(images)
        for j, _ in queue:
            remaining[j] += 1
        acc: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        weights: dict[tuple[int, int], np.ndarray] = {}
        done: dict[int, np.ndarray] = {}
        next_out = 0
        i = 0
        while i < len(queue):
            shape = queue[i][1][2:]
            batch = [queue[i]]
            i += 1
            while i < len(queue) and len(batch) < self.batch_size and queue[i][1][2:] == shape:
                batch.append(queue[i])
                i += 1
            x = np.stack([self._window_input(images[j], *win) for j, win in batch])
            probs = probabilities(self.segmenter.logits(x), self.segmenter.image_head)  # each window's image head
            wwin = weights.get(shape)
            if wwin is None:
                ov = self.infer.tile_overlap
                wwin = weights[shape] = np.outer(_ramp(shape[0], ov), _ramp(shape[1], ov))
            for (j, (y, x0, h, w)), p in zip(batch, probs):
                H, W = images[j].shape[:2]
                if j not in acc:
                    acc[j] = (np.zeros((k, H, W), np.float32), np.zeros((H, W), np.float32))
                num, den = acc[j]
                vh, vw = min(h, H - y), min(w, W - x0)  # windows reach into the padding: crop it away
                ww = wwin[:vh, :vw]
                num[:, y : y + vh, x0 : x0 + vw] += p[:, :vh, :vw] * ww
                den[y : y + vh, x0 : x0 + vw] += ww
                remaining[j] -= 1
                if remaining[j] == 0:
                    num, den = acc.pop(j)
                    num /= den  # in place: no second full-size array
                    done[j] = num[0] if k == 1 else num
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
        assert next_out == len(images), "every image's windows were processed"

    def _run_chunk(self, chunk: list[_Item]) -> list[Result]:
        return self._finish_chunk(*self._infer_chunk(chunk))

    def probability_maps(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray | None, float | None]]:
        """The networks' part of predict for decoded uint8 images (H, W) or (H, W, 3), in batches: per image
        (prob, gate_probability). prob: the native-size probability map, (H, W) for a binary head or (N, H, W)
        class probabilities; None for an image the gate judged OK (not segmented). gate_probability: None
        without a gate. `result` turns a pair into a Result."""
        gate_p: list[float | None] = [None] * len(images)
        if self._gate is not None and images:
            gate_p = [float(p) for p in self._gate.probabilities(images, self._references, self.batch_size)]
        run = [j for j in range(len(images)) if gate_p[j] is None or gate_p[j] >= self.gate_threshold]
        sub = [images[j] for j in run]
        maps = dict(zip(run, self._segment_tiles(sub) if self.tile else self._segment_resize(sub)))
        return [(maps.get(j), gate_p[j]) for j in range(len(images))]

    def result(
        self,
        image: np.ndarray,
        prob: np.ndarray | None,
        gate_probability: float | None = None,
        path: str | None = None,
        post: PostProcess | None = None,
    ) -> Result:
        """One image's Result from its probability map through `post` (default: the checkpoint's post-processing
        with this Predictor's overrides; the service passes one with a request's own threshold and min_area).
        prob None (the gate's OK): an all-background map, no defects, verdict OK."""
        h, w = image.shape[:2]
        if prob is None:
            k = self.segmenter.num_classes
            prob = np.zeros((h, w) if k == 1 else (k, h, w), np.float32)
            if k > 1:
                prob[0] = 1.0  # all background
            return Result(path, (h, w), prob, np.zeros((h, w), np.uint8), [], "OK", 0.0, gate_probability, image=image)
        det = (post or self.post)(prob)
        return Result(path, (h, w), prob, det.mask, det.defects, det.verdict, det.score, gate_probability, image=image)

    def _infer_chunk(self, chunk: list[_Item]) -> tuple[list[_Item], list, float]:
        """The networks' part of a chunk; returns what `_finish_chunk` needs, with the time it took."""
        t0 = time.perf_counter()
        pairs = self.probability_maps([it.image for it in chunk if it.image is not None])
        return chunk, pairs, time.perf_counter() - t0

    def _finish_chunk(self, chunk: list[_Item], pairs: list, infer_seconds: float) -> list[Result]:
        """Post-processing (the one shared step, `localize.PostProcess`) and the Results of a chunk, in order."""
        t0 = time.perf_counter() - infer_seconds
        ok = [it for it in chunk if it.image is not None]
        results = [self.result(it.image, prob, gp, it.path) for it, (prob, gp) in zip(ok, pairs)]
        share = (time.perf_counter() - t0) / max(1, len(ok))
        out: list[Result] = []
        done = iter(results)
        for it in chunk:
            if it.image is None:
                out.append(Result(it.path, None, verdict="ERROR", error=it.error, seconds=it.read_seconds))
            else:
                r = next(done)
                r.seconds = it.read_seconds + share
                out.append(r)
        return out


def _read_ahead(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """`items`, produced by a background thread up to `depth` ahead. An exception in the producer is raised here;
    when the consumer stops early, the producer stops at its next item."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put((it, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="defectseg-read", daemon=True)
    thread.start()
    try:
        while True:
            it, exc = q.get()
            if exc is not None:
                raise exc
            if it is done:
                return
            yield it
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
