"""Inference: a checkpoint (.pt or .onnx) -> per-image defect probability, class mask and defect records.

`Predictor.from_checkpoint(path)` loads a training checkpoint (`.pt`, PyTorch on CPU or CUDA) or an ONNX file
written by `defectseg export` (`.onnx`, ONNX Runtime; the config travels in its metadata, so the `.pt` is not
needed). Every image is read at its native size and every result (probabilities, mask, defect boxes) is in
the native image's pixels.

How an image reaches the model (the policy):

- **resize** (default: `tile=None` with no `infer.tile` in the checkpoint's config, or `tile=0`): exactly as
  in training. The whole image is resized to the training resolution (`config.resize_hw`: `data.size` squared,
  or `data.shape` for tall or wide images)
  (area interpolation when shrinking both sides, bilinear otherwise, as `data.dataset.resize_pair`), the
  model runs once, and the probability map is resized back to the native size (the same rule the other
  way: bilinear when growing, area when shrinking). Any image size works; a 20000 x 20000 image is
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

A gate (cascade, `gate=` a classifier checkpoint with task "classify") always sees the whole image resized to
its own training resolution; images it scores below `gate_threshold` get an all-zero probability map, an
empty mask and no defects without running the segmenter. In reference mode (the checkpoint's
`data.reference` is set) the model input is the image and a defect-free reference of the same product,
resized to the image's size, concatenated on the channel axis (image first).

Memory stays bounded for folders of any size and for very large images: `predict_paths` reads images in
chunks of at most `batch_size` images and `CHUNK_PIXELS` pixels, the model only ever sees one batch of
training-size inputs or tiles, and per image the full-resolution float32 arrays are the probability map
(one per class for multi-class heads) plus, in tile mode, one weight map.
"""
from __future__ import annotations

import csv
import json
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from scipy.special import expit, softmax

from . import config as C
from .data.io import read_image, to_gray, write_png
from .localize import PostProcess

__all__ = ["Result", "Predictor", "ResultWriter", "write_results", "load_net", "torch_net",
           "classifier_probabilities"]

# A chunk of images in flight holds (for each image) the decoded image, its probability map and mask at native
# size; capping its pixels keeps a folder of huge images from holding batch_size of them at once.
CHUNK_PIXELS = 64 * 2**20


# ----------------------------------------------------------------------------- results
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
        return {"path": self.path, "width": w, "height": h, "verdict": self.verdict,
                "score": None if self.score is None else round(self.score, 6),
                "defects": [{k: d[k] for k in ("x1", "y1", "x2", "y2", "area", "score", "class")}
                            for d in self.defects],
                "gate_probability": self.gate_probability, "error": self.error,
                "seconds": round(self.seconds, 6)}


# ----------------------------------------------------------------------------- networks
@dataclass
class _Net:
    """A loaded network behind one function: uint8 (B, C_in, h, w) -> float32 logits (B, K, h, w) or (B, K).

    The network normalises the pixel values itself (`models.PixelModel`, or the exported graph).
    """

    logits: Callable[[np.ndarray], np.ndarray]
    config: C.RunConfig
    num_classes: int
    class_names: list[str]
    task: str
    size_multiple: int
    image_channels: int           # channels of the image itself (1 gray, 3 RGB)
    uses_reference: bool          # input = image + reference on the channel axis
    source: Path
    backend: str                  # "torch" or "onnxruntime"
    fixed_batch: int | None = None          # ONNX graphs exported --static
    fixed_hw: tuple[int, int] | None = None
    note: str = ""                          # how backend "auto" chose (empty when the backend was asked for)

    @property
    def input_channels(self) -> int:
        return self.image_channels * (2 if self.uses_reference else 1)

    @property
    def input_hw(self) -> tuple[int, int]:
        """The resolution of resize mode: the training size, or the fixed size of a static ONNX graph."""
        return self.fixed_hw or C.resize_hw(self.config.data)


def _checkpoint_fields(d: dict[str, Any], source: Path) -> tuple[C.RunConfig, int, list[str], str]:
    missing = [k for k in ("config", "num_classes") if k not in d]
    if missing:
        raise ValueError(f"{source} lacks {missing}; use a checkpoint written by `defectseg train` (or an ONNX "
                         "file written by `defectseg export`)")
    cfg = C.from_dict(d["config"])
    num_classes = int(d["num_classes"])
    names = list(d.get("class_names") or (["background", "defect"] if num_classes <= 2
                                          else [str(i) for i in range(num_classes)]))
    return cfg, num_classes, names, str(d.get("task", cfg.train.task))


def _torch_net(path: Path, device: str, dtype: str | None, channels_last: bool) -> _Net:
    from .engine import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    cfg, num_classes, names, task = _checkpoint_fields(ckpt, path)
    model, _ = model_from_checkpoint(ckpt, source=path)
    return torch_net(model, cfg, num_classes, names, task, device, dtype, channels_last, source=path)


def torch_net(model: Any, cfg: C.RunConfig, num_classes: int, class_names: list[str], task: str,
              device: str = "auto", dtype: str | None = None, channels_last: bool = False,
              source: str | Path = "model") -> _Net:
    """A `_Net` around an in-memory `PixelModel` (raw pixels in, logits out): how training validates a model
    through the same path as predict. The model is put in eval mode on `device` (moved in place)."""
    import torch

    from .engine import pick_device

    dev = pick_device(device) if isinstance(device, str) else device
    if dtype not in (None, "fp32", "bf16", "fp16"):
        raise ValueError(f"dtype {dtype!r} is not supported; use bf16, fp16 or leave it unset (float32)")
    if dtype in ("bf16", "fp16") and dev.type != "cuda":
        raise ValueError(f"dtype {dtype} autocast is a CUDA option but the device is {dev}; drop --dtype or "
                         "use --device cuda")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype or "")
    cl = channels_last and dev.type == "cuda"  # a CUDA memory-layout option; on the CPU it only costs copies
    model = model.eval().to(dev)
    if dev.type == "cpu":
        from .fuse import fuse_for_inference

        model = fuse_for_inference(model)  # BN folded, CheapNet rebuilt: eager CheapNet-M at 512² in half the time
    if cl:
        model = model.to(memory_format=torch.channels_last)

    def logits(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(dev, non_blocking=True)  # uint8 crosses the bus
        if cl:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            out = model(t)
        return out.float().cpu().numpy()

    return _Net(logits, cfg, num_classes, class_names, task, int(getattr(model, "size_multiple", 1)),
                cfg.data.channels, bool(cfg.data.reference), Path(source), "torch")


def _onnx_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "auto":
        return ["cuda", "cpu"]
    if device == "cpu":
        return ["cpu"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"device {device!r} asked for but this onnxruntime has no CUDA provider "
                             f"(available: {ort.get_available_providers()}); use --device cpu or install "
                             "onnxruntime-gpu")
        return ["cuda"]
    raise ValueError(f"device {device!r} is not supported by the onnxruntime backend; use auto, cpu or cuda")


def _onnx_net(path: Path, device: str, dtype: str | None, channels_last: bool, threads: int | None) -> _Net:
    from .engine import input_channels
    from .export import ONNX_CONFIG_KEY, ONNX_FORMAT, OnnxModel

    if dtype not in (None, "fp32"):
        raise ValueError(f"dtype {dtype} is a torch-backend option; the ONNX graph runs in float32 "
                         "(drop --dtype, or predict with the .pt checkpoint)")
    try:
        om = OnnxModel(path, providers=_onnx_providers(device), threads=threads)
    except ValueError:
        raise
    except Exception as exc:  # anything ORT or protobuf throws for a broken file
        raise ValueError(f"cannot load ONNX model {path} ({type(exc).__name__}: {str(exc)[:200]}); re-export "
                         "it with `defectseg export`") from exc
    raw = om.metadata.get(ONNX_CONFIG_KEY)
    if raw is None:
        raise ValueError(f"{path} has no '{ONNX_CONFIG_KEY}' metadata, so its preprocessing is unknown; export "
                         "it with `defectseg export --checkpoint best.pt` (not a bare torch.onnx.export)")
    try:
        meta = json.loads(raw)
        cfg, num_classes, names, task = _checkpoint_fields(meta, path)
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: metadata '{ONNX_CONFIG_KEY}' is not a defectseg config ({exc}); re-export "
                         "it with `defectseg export`") from exc
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path} was exported as {meta.get('format')!r}, whose graph expects normalised input; "
                         f"this version reads {ONNX_FORMAT!r} (the graph normalises raw pixels itself): re-export "
                         "it from its .pt with `defectseg export`")
    image_channels, uses_ref = cfg.data.channels, bool(cfg.data.reference)
    in_channels = input_channels(cfg)
    if om.input_channels != in_channels:
        raise ValueError(f"{path}: the graph takes {om.input_channels} channels but its config implies "
                         f"{in_channels}; re-export it with `defectseg export`")
    shape = om.input_shape
    fixed_batch = shape[0] if isinstance(shape[0], int) else None
    fixed_hw = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    multiple = int(om.metadata.get("defectseg_size_multiple", "1"))

    def run(x: np.ndarray) -> np.ndarray:
        xf = x.astype(np.float32)  # raw pixel values: the graph normalises them
        if fixed_batch is None or len(xf) == fixed_batch:
            return om(xf)
        outs = []
        for i in range(0, len(xf), fixed_batch):  # a --static graph: feed its fixed batch, zero-padded
            part = xf[i:i + fixed_batch]
            n = len(part)
            if n < fixed_batch:
                part = np.concatenate([part, np.zeros((fixed_batch - n, *part.shape[1:]), np.float32)])
            outs.append(om(part)[:n])
        return np.concatenate(outs)

    return _Net(run, cfg, num_classes, names, task, multiple, image_channels, uses_ref, path, "onnxruntime",
                fixed_batch, fixed_hw)


def load_net(path: str | Path, device: str = "auto", backend: str = "auto", dtype: str | None = None,
             channels_last: bool = False, threads: int | None = None) -> _Net:
    """Load a .pt checkpoint (torch) or an exported .onnx (onnxruntime) behind one interface.

    backend "auto": an .onnx runs on ONNX Runtime; a .pt on the CPU (float32) is exported to ONNX at load and
    runs on ONNX Runtime when its logits match PyTorch's (`_cpu_onnx_net`; 3-7x faster than eager PyTorch in
    docs/benchmarks.md), else on PyTorch; on CUDA a .pt runs on PyTorch. `_Net.backend` says which was chosen and
    `_Net.note` why."""
    path = Path(path)
    is_onnx = path.suffix.lower() == ".onnx"
    if backend == "auto" and not is_onnx and dtype in (None, "fp32") and path.is_file():
        from .engine import pick_device

        if pick_device(device).type == "cpu":
            return _cpu_onnx_net(path, threads)
    if backend == "auto":
        backend = "onnxruntime" if is_onnx else "torch"
    if backend not in ("torch", "onnxruntime"):
        raise ValueError(f"backend {backend!r} is not supported; use auto, torch or onnxruntime")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass runs/<name>/best.pt or an exported .onnx")
    if backend == "onnxruntime" and not is_onnx:
        raise ValueError(f"backend onnxruntime needs an .onnx file but got {path}; export it first with "
                         f"`defectseg export --checkpoint {path}` and pass the .onnx")
    if backend == "torch" and is_onnx:
        raise ValueError(f"backend torch needs a .pt checkpoint but got {path}; use --backend onnxruntime "
                         "(or auto) for .onnx files")
    if backend == "torch":
        return _torch_net(path, device, dtype, channels_last)
    return _onnx_net(path, device, dtype, channels_last, threads)


# max |logit difference| accepted between the exported graph and PyTorch when backend "auto" picks ONNX Runtime
# (float32 rounding of the same function gives ~1e-6; relative to the logits' scale when that is above 1)
AUTO_PARITY = 1e-3


def _cpu_onnx_net(path: Path, threads: int | None) -> _Net:
    """backend "auto" for a .pt on the CPU: export its model after `fuse.fuse_for_inference` to a temporary ONNX
    file, check the logits against the checkpoint's PyTorch model on a random image, and run ONNX Runtime; falls back
    to PyTorch (with `note` saying why) when onnxruntime is missing, the export fails or the logits differ."""
    import tempfile

    import torch

    from .engine import input_channels, load_checkpoint, model_from_checkpoint
    from .export import export_onnx, onnx_metadata
    from .fuse import fuse_for_inference

    ckpt = load_checkpoint(path)
    cfg, num_classes, names, task = _checkpoint_fields(ckpt, path)
    model, _ = model_from_checkpoint(ckpt, source=path)

    def on_torch(why: str) -> _Net:  # built only when ONNX Runtime is not used
        net = torch_net(model, cfg, num_classes, names, task, "cpu", source=path)
        net.note = f"{why}; running PyTorch"
        return net

    try:
        import onnxruntime  # noqa: F401

        m = int(getattr(model, "size_multiple", 1))
        side = max(m, min(cfg.data.size, 256) // m * m)
        shape = (1, input_channels(cfg), side, side)
        with tempfile.TemporaryDirectory(prefix="defectseg-") as tmp:
            onnx_path = export_onnx(fuse_for_inference(model), Path(tmp) / "model.onnx", shape,
                                    metadata=onnx_metadata(ckpt))
            net = _onnx_net(onnx_path, "cpu", None, False, threads)  # the session holds the graph in memory
        x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        with torch.inference_mode():  # the checkpoint's own model, not a rewritten one, is the reference
            ref = model.eval()(torch.from_numpy(x)).numpy()
        got = net.logits(x)
        diff = float(np.abs(ref - got).max())
        if not diff <= AUTO_PARITY * max(1.0, float(np.abs(ref).max())):
            return on_torch(f"ONNX Runtime logits differ from PyTorch by {diff:.2g}")
    except ImportError:
        return on_torch("onnxruntime is not installed")
    except (ValueError, RuntimeError) as exc:
        return on_torch(f"ONNX export failed ({str(exc)[:120]})")
    net.source = path
    net.note = f"exported to ONNX at load (max logit difference to PyTorch {diff:.1g})"
    return net


# ----------------------------------------------------------------------------- array helpers
def _as_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> (H, W) for channels=1 (luma) or (H, W, 3) for channels=3."""
    if channels == 1:
        return to_gray(a) if a.ndim == 3 else a
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize like `data.dataset.resize_pair` does for images: area when shrinking both sides, else bilinear."""
    h, w = hw
    ih, iw = a.shape[:2]
    if (ih, iw) == (h, w):
        return a
    interp = cv2.INTER_AREA if (h <= ih and w <= iw) else cv2.INTER_LINEAR
    return cv2.resize(a, (w, h), interpolation=interp)


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


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """(B, K, h, w) logits -> sigmoid (K == 1) or softmax over K, float32."""
    if logits.shape[1] == 1:
        return expit(logits).astype(np.float32, copy=False)
    return softmax(logits, axis=1).astype(np.float32, copy=False)


def _resize_prob(p: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(K, h, w) probabilities at model resolution -> (H, W) for K == 1, else (K, H, W), in native pixels."""
    if p.shape[0] == 1:
        return np.ascontiguousarray(_resize(p[0], hw), dtype=np.float32)
    out = np.empty((p.shape[0], *hw), np.float32)
    for k in range(p.shape[0]):  # one plane at a time: no (H, W, K) interleaved copy
        out[k] = _resize(p[k], hw)
    return out


def classifier_probabilities(net: _Net, batch: np.ndarray) -> np.ndarray:
    """A classifier's defect probability (B,) float64 for a uint8 batch (B, C_in, h, w): sigmoid of logit 0."""
    return expit(net.logits(batch).reshape(len(batch), -1)[:, 0].astype(np.float64))


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

    def __init__(self, segmenter: _Net, infer: C.InferConfig, batch_size: int = 8, tile: int | None = None,
                 gate: _Net | None = None, gate_threshold: float = 0.5,
                 reference: np.ndarray | None = None, overlap: bool = True) -> None:
        if segmenter.task != "segment":
            raise ValueError(f"{segmenter.source} is a {segmenter.task} model; predict needs a segmentation "
                             "checkpoint (pass a classifier as the gate: --gate)")
        if gate is not None and gate.task != "classify":
            raise ValueError(f"gate {gate.source} is a {gate.task} model; the gate must be a classifier trained "
                             "with `defectseg train --task classify`")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= gate_threshold <= 1.0:
            raise ValueError(f"gate_threshold={gate_threshold} is not a probability; pass a value in [0, 1]")
        self.segmenter, self.gate = segmenter, gate
        self.overlap = overlap  # predict_paths: read and post-process in threads beside the network
        self.infer = infer
        self.post = PostProcess.from_config(infer)
        self.batch_size = batch_size
        self.gate_threshold = gate_threshold
        nets = [segmenter] + ([gate] if gate is not None else [])
        needs_ref = [n for n in nets if n.uses_reference]
        if needs_ref and reference is None:
            trained = needs_ref[0].config.data.reference
            raise ValueError(f"{needs_ref[0].source} is a reference-mode model (data.reference={trained!r}): it "
                             "compares each image with a defect-free reference of the same product; pass "
                             "--reference REF.png (reference=...)")
        if reference is not None and not needs_ref:
            raise ValueError("a reference image was given but the model was not trained in reference mode "
                             "(data.reference unset); drop --reference")
        self.use_reference(reference)
        m = segmenter.size_multiple
        if tile:
            if segmenter.fixed_hw is not None:
                raise ValueError(f"tile mode runs windows of any size, but {segmenter.source} was exported with a "
                                 f"fixed {segmenter.fixed_hw[0]}x{segmenter.fixed_hw[1]} input; re-export with "
                                 "`defectseg export --dynamic` or use resize mode (no --tile)")
            if tile < m:
                raise ValueError(f"tile={tile} is smaller than the model's size multiple {m}; use --tile >= {m}")
            self.tile: int | None = (tile // m) * m  # rounded down: a forward never exceeds `tile` pixels
            if not 0 <= infer.tile_overlap < self.tile:
                raise ValueError(f"tile_overlap={infer.tile_overlap} must be >= 0 and below the tile size "
                                 f"{self.tile}; pass a larger --tile or a smaller --tile-overlap (e.g. "
                                 f"{self.tile // 4})")
        else:
            self.tile = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", backend: str = "auto",
                        dtype: str | None = None, channels_last: bool = False, batch_size: int = 8,
                        tile: int | None = None, gate: str | Path | None = None, gate_threshold: float = 0.5,
                        reference: str | Path | None = None, threshold: float | None = None,
                        min_area: int | None = None, connectivity: int | None = None, score: str | None = None,
                        tile_overlap: int | None = None, threads: int | None = None) -> "Predictor":
        """Load a segmenter from a .pt checkpoint (torch backend) or an exported .onnx (onnxruntime backend).

        device: auto | cpu | cuda | cuda:N. dtype: None (float32) | "bf16" | "fp16" autocast (torch on CUDA);
        channels_last: torch on CUDA only (ignored on the CPU). tile: None = the checkpoint's `infer.tile`
        (unset: resize mode), 0 = resize mode, N = tile mode with N x N windows. gate: a classifier
        checkpoint (.pt or .onnx); images it scores below `gate_threshold` are OK without segmentation.
        reference: a defect-free image for reference-mode models. threshold/min_area/connectivity/score/
        tile_overlap override the checkpoint's `infer` section. threads: ONNX Runtime intra-op threads.
        """
        seg = load_net(path, device, backend, dtype, channels_last, threads)
        gate_net = None
        if gate is not None:
            gate_net = load_net(gate, device, "auto", dtype, channels_last, threads)
        overrides = {"threshold": threshold, "min_area": min_area, "connectivity": connectivity, "score": score,
                     "tile_overlap": tile_overlap}
        # (a bad override fails in the constructor's PostProcess, with its message)
        infer = C.InferConfig(**{**vars(seg.config.infer), **{k: v for k, v in overrides.items() if v is not None}})
        ref = None
        if reference is not None:
            ref = read_image(reference)  # channels converted per network later
        return cls(seg, infer, batch_size=batch_size, tile=infer.tile if tile is None else tile, gate=gate_net,
                   gate_threshold=gate_threshold, reference=ref)

    def use_reference(self, reference: np.ndarray | None) -> None:
        """Compare the next images with this defect-free reference (reference-mode models)."""
        self.reference = reference
        self._ref_cache: dict[tuple[int, int, int], np.ndarray] = {}

    @property
    def mode(self) -> str:
        """"resize" or "tile"."""
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
                raise ValueError(f"image #{i} has dtype {a.dtype}; pass uint8 arrays (read files with "
                                 "defectseg.data.io.read_image)")
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

    def _reference_for(self, net: _Net, hw: tuple[int, int]) -> np.ndarray:
        """The reference in `net`'s channels, resized to an image's native (H, W) (cached per size)."""
        assert self.reference is not None
        key = (net.image_channels, *hw)
        ref = self._ref_cache.get(key)
        if ref is None:
            if len(self._ref_cache) > 4:  # a folder of mixed sizes: keep memory bounded
                self._ref_cache.clear()
            ref = _resize(_as_channels(self.reference, net.image_channels), hw)
            self._ref_cache[key] = ref
        return ref

    def _resized_input(self, net: _Net, image: np.ndarray) -> np.ndarray:
        """uint8 (C_in, h, w): image (+ reference) resized to the net's resolution, padded to its multiple."""
        hw = net.input_hw
        parts = [_resize(_as_channels(image, net.image_channels), hw)]
        if net.uses_reference:
            parts.append(_resize(self._reference_for(net, image.shape[:2]), hw))
        m = net.size_multiple
        ph, pw = _round_up(hw[0], m), _round_up(hw[1], m)
        return np.concatenate([_chw(_pad_to(p, ph, pw)) for p in parts], axis=0)

    def _gate_probabilities(self, images: list[np.ndarray]) -> list[float]:
        assert self.gate is not None
        out: list[float] = []
        for i in range(0, len(images), self.batch_size):
            batch = np.stack([self._resized_input(self.gate, a) for a in images[i:i + self.batch_size]])
            out.extend(float(v) for v in classifier_probabilities(self.gate, batch))
        return out

    def _segment_resize(self, images: list[np.ndarray]) -> Iterator[np.ndarray]:
        """Native-size probability maps, one per image, in order (resize mode)."""
        hw = self.segmenter.input_hw
        for i in range(0, len(images), self.batch_size):
            part = images[i:i + self.batch_size]
            batch = np.stack([self._resized_input(self.segmenter, a) for a in part])
            probs = _probabilities(self.segmenter.logits(batch))[:, :, :hw[0], :hw[1]]  # drop multiple-padding
            for a, p in zip(part, probs):
                yield _resize_prob(p, a.shape[:2])

    def _tile_windows(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(y0, x0, h, w) windows covering the image padded to the size multiple."""
        assert self.tile is not None
        m = self.segmenter.size_multiple
        hp, wp = _round_up(image.shape[0], m), _round_up(image.shape[1], m)
        th, tw = min(self.tile, hp), min(self.tile, wp)
        stride = lambda t: max(m, ((t - self.infer.tile_overlap) // m) * m)  # origins on the model's grid
        return [(y, x, th, tw) for y in _starts(hp, th, stride(th)) for x in _starts(wp, tw, stride(tw))]

    def _window_input(self, image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
        net = self.segmenter
        parts = [_as_channels(image[y:y + h, x:x + w], net.image_channels)]
        if net.uses_reference:
            parts.append(self._reference_for(net, image.shape[:2])[y:y + h, x:x + w])
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
            probs = _probabilities(self.segmenter.logits(x))
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
                num[:, y:y + vh, x0:x0 + vw] += p[:, :vh, :vw] * ww
                den[y:y + vh, x0:x0 + vw] += ww
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
        if self.gate is not None and images:
            gate_p = list(self._gate_probabilities(list(images)))
        run = [j for j in range(len(images)) if gate_p[j] is None or gate_p[j] >= self.gate_threshold]
        sub = [images[j] for j in run]
        maps = dict(zip(run, self._segment_tiles(sub) if self.tile else self._segment_resize(sub)))
        return [(maps.get(j), gate_p[j]) for j in range(len(images))]

    def result(self, image: np.ndarray, prob: np.ndarray | None, gate_probability: float | None = None,
               path: str | None = None, post: PostProcess | None = None) -> Result:
        """One image's Result from its probability map through `post` (default: the checkpoint's post-processing
        with this Predictor's overrides; the service passes one with a request's own threshold and min_area).
        prob None (the gate's OK): an all-background map, no defects, verdict OK."""
        h, w = image.shape[:2]
        if prob is None:
            k = self.segmenter.num_classes
            prob = np.zeros((h, w) if k == 1 else (k, h, w), np.float32)
            if k > 1:
                prob[0] = 1.0  # all background
            return Result(path, (h, w), prob, np.zeros((h, w), np.uint8), [], "OK", 0.0, gate_probability,
                          image=image)
        det = (post or self.post)(prob)
        return Result(path, (h, w), prob, det.mask, det.defects, det.verdict, det.score, gate_probability,
                      image=image)

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


# ----------------------------------------------------------------------------- files
_CSV_FIELDS = ("path", "width", "height", "verdict", "gate_probability", "defect", "x1", "y1", "x2", "y2",
               "area", "score", "class", "error")


class ResultWriter:
    """Write predictions into `out_dir` as they come.

    Per readable image: `<stem>_mask.png` (binary heads, sigmoid or 2-class softmax: 0/255; multi-class heads:
    the class ids 0..N-1 as gray values) and, unless `overlays=False`, `<stem>_overlay.png` (`viz.overlay`:
    tinted defects, boxes, areas).
    When two inputs share a stem, later ones get `<stem>_2`, `<stem>_3`, ... (results.jsonl names the files).
    `results.jsonl`: one object per image (`Result.to_json()` plus "mask" and "overlay" file names).
    `results.csv`: one row per defect; an image with no defect (OK, or an error) gets one row with empty
    defect columns, so every input appears. Counters: n_images, n_ok, n_ng, n_errors, n_defects, errors.
    """

    def __init__(self, out_dir: str | Path, overlays: bool = True, masks: bool = True,
                 overwrite: bool = False, background: bool = True, append: bool = False) -> None:
        self.out_dir = Path(out_dir)
        # append (folder watching): continue the results of an earlier run in out_dir; `done` lists its inputs
        previous = _read_records(self.out_dir / "results.jsonl") if append else []
        if not previous:
            _claim_output(self.out_dir, overwrite)
        self.done: set[str] = {str(rec.get("path")) for rec in previous}
        self.overlays, self.masks = overlays, masks
        # background: overlays are drawn and PNGs encoded by one worker thread (zlib and OpenCV release the GIL),
        # beside the network; at most MAX_PENDING images wait, and a failed write is raised at the next call.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="defectseg-write") if background else None
        self._pending: deque = deque()
        if previous and not (self.out_dir / "results.jsonl").read_bytes().endswith(b"\n"):
            # a crash mid-line: keep the whole records only, so the next one starts on its own line
            (self.out_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in previous))
        mode = "a" if previous else "w"
        self._jsonl = open(self.out_dir / "results.jsonl", mode)
        self._csv_file = open(self.out_dir / "results.csv", mode, newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=_CSV_FIELDS)
        if not previous:
            self._csv.writeheader()
        self._stems: dict[str, int] = {}
        for rec in previous:  # later images with a stem used before get the next free suffix
            if rec.get("path"):
                self._stem(rec["path"])
        self.n_images = self.n_ok = self.n_ng = self.n_errors = self.n_defects = 0
        self.errors: list[tuple[str, str]] = []

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    MAX_PENDING = 4

    def close(self) -> None:
        try:
            self._drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._jsonl.close()
            self._csv_file.close()

    def _stem(self, path: str | None) -> str:
        stem = Path(path).stem if path else f"image{self.n_images:06d}"
        n = self._stems.get(stem, 0) + 1
        self._stems[stem] = n
        return stem if n == 1 else f"{stem}_{n}"

    def write(self, r: Result) -> None:
        self.n_images += 1
        rec = r.to_json()
        rec["mask"] = rec["overlay"] = None
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
        self._jsonl.write(json.dumps(rec) + "\n")
        base = {"path": _csv_safe(rec["path"]), "width": rec["width"], "height": rec["height"], "verdict": r.verdict,
                "gate_probability": "" if r.gate_probability is None else f"{r.gate_probability:.6f}",
                "error": _csv_safe(r.error or "")}
        if r.defects:
            for i, d in enumerate(r.defects):
                self._csv.writerow({**base, "defect": i, **{k: d[k] for k in ("x1", "y1", "x2", "y2", "area",
                                                                                 "class")},
                                    "score": f"{d['score']:.6f}"})
        else:
            self._csv.writerow(base)

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
        from .viz import overlay

        if mask_name:
            write_png(self.out_dir / mask_name, r.mask_image())
        if overlay_name:
            write_png(self.out_dir / overlay_name, overlay(r.image, r.mask, r.defects))

    def flush(self) -> None:
        """Finish the pending image writes and put the records on disk (fsync): what is listed exists."""
        self._drain()
        for f in (self._jsonl, self._csv_file):
            f.flush()
            os.fsync(f.fileno())


def _read_records(path: Path) -> list[dict[str, Any]]:
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
        raise ValueError(f"cannot create the output folder {out_dir}: {exc.strerror}; choose a writable --out") \
            from None
    held = sorted(out_dir.iterdir())
    if held and not overwrite:
        raise ValueError(f"output folder {out_dir} is not empty ({len(held)} entries, e.g. {held[0].name}); "
                         "choose a new --out, or pass --overwrite to replace a previous prediction there")
    if held:
        for rec in _read_records(out_dir / "results.jsonl"):
            for key in ("mask", "overlay"):
                if rec.get(key):
                    (out_dir / Path(rec[key]).name).unlink(missing_ok=True)
    for name in ("results.jsonl", "results.csv"):
        (out_dir / name).unlink(missing_ok=True)


def write_results(results: Iterable[Result], out_dir: str | Path, overlays: bool = True,
                  overwrite: bool = False) -> int:
    """Write every result with a `ResultWriter`; returns the number of NG images."""
    with ResultWriter(out_dir, overlays=overlays, overwrite=overwrite) as w:
        for r in results:
            w.write(r)
    return w.n_ng
