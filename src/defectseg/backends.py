"""Networks behind one interface: a .pt checkpoint on PyTorch, an exported .onnx on ONNX Runtime, and the one rule
that picks between them ("auto"), which the Predictor and `defectseg benchmark` both follow.

A `Net` is a loaded network as one function, uint8 (B, C_in, h, w) -> float32 logits, plus what the Predictor
needs to feed it (its config, channels, size multiple). The network normalises raw pixel values itself
(`models.PixelModel`, or the exported graph).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from . import config as C
from .checkpoint import checkpoint_fields, input_channels, load_checkpoint, model_from_checkpoint
from .export import ONNX_CONFIG_KEY, ONNX_FORMAT, SIZE_MULTIPLE_KEY, OnnxModel, export_onnx, onnx_metadata
from .fuse import fuse_for_inference
from .models import has_image_head
from .runtime import autocast, parse_dtype, pick_device

__all__ = ["AUTO_PARITY", "Net", "auto_backend", "classifier_probabilities", "load_net", "torch_net"]

# max |logit difference| accepted between the exported graph and PyTorch when backend "auto" picks ONNX Runtime
# (float32 rounding of the same function gives ~1e-6; relative to the logits' scale when that is above 1)
AUTO_PARITY = 1e-3


def auto_backend(device: torch.device, dtype: str | None, torch_only: bool = False) -> str:
    """The "auto" rule: float32 inference on the CPU runs the exported graph on ONNX Runtime ("onnxruntime": 3-7x
    faster than eager PyTorch, docs/benchmarks.md); CUDA, low precision or a torch-only option (`torch_only`:
    training, channels_last, torch.compile, CUDA graphs) run on PyTorch ("torch")."""
    if device.type == "cpu" and dtype in (None, "fp32") and not torch_only:
        return "onnxruntime"
    return "torch"


@dataclass
class Net:
    """A loaded network behind one function: uint8 (B, C_in, h, w) -> float32 logits (B, K, h, w) or (B, K).

    The network normalises the pixel values itself (`models.PixelModel`, or the exported graph).
    """

    logits: Callable[[np.ndarray], np.ndarray]
    config: C.RunConfig
    num_classes: int
    class_names: list[str]
    task: str
    size_multiple: int
    image_channels: int  # channels of the image itself (1 gray, 3 RGB)
    uses_reference: bool  # input = image + reference on the channel axis
    source: Path
    backend: str  # "torch" or "onnxruntime"
    fixed_batch: int | None = None  # ONNX graphs exported --static
    fixed_hw: tuple[int, int] | None = None
    note: str = ""  # how backend "auto" chose (empty when the backend was asked for)

    @property
    def input_channels(self) -> int:
        return self.image_channels * (2 if self.uses_reference else 1)

    @property
    def image_head(self) -> bool:
        """Whether the last logit channel is an image logit (`models.has_image_head`), not a class."""
        return has_image_head(self.config.model.name, self.config.model.options)

    @property
    def scores_images(self) -> bool:
        """Whether this net can call images defective as a gate does: a classifier, or a model of good parts
        (`train --task anomaly`), whose one-logit map's maximum is its image score."""
        return self.task == "classify" or self.config.train.task == "anomaly"

    @property
    def input_hw(self) -> tuple[int, int]:
        """The resolution of resize mode: the training size, or the fixed size of a static ONNX graph."""
        return self.fixed_hw or C.resize_hw(self.config.data)


def classifier_probabilities(net: Net, batch: np.ndarray) -> np.ndarray:
    """An image-level defect probability (B,) float64 for a uint8 batch (B, C_in, h, w): a classifier's sigmoid of
    logit 0; a model of good parts' (`Net.scores_images`) sigmoid of its highest logit, the probability its own
    verdict compares with its threshold."""
    logits = net.logits(batch).reshape(len(batch), -1)
    return expit((logits[:, 0] if net.task == "classify" else logits.max(1)).astype(np.float64))


def load_net(
    path: str | Path,
    device: str = "auto",
    backend: str = "auto",
    dtype: str | None = None,
    channels_last: bool = False,
    threads: int | None = None,
) -> Net:
    """Load a .pt checkpoint (torch) or an exported .onnx (onnxruntime) behind one interface.

    backend "auto": an .onnx runs on ONNX Runtime; a .pt where `auto_backend` says onnxruntime (float32 on the CPU)
    is exported to ONNX at load and runs on ONNX Runtime when its logits match PyTorch's (`_exported_net`), else on
    PyTorch; elsewhere (CUDA, --dtype) on PyTorch. `Net.backend` says which was chosen and `Net.note` why."""
    path = Path(path)
    is_onnx = path.suffix.lower() == ".onnx"
    if backend == "auto" and not is_onnx and path.is_file():
        if auto_backend(pick_device(device), dtype) == "onnxruntime":
            return _exported_net(path, threads)
    if backend == "auto":
        backend = "onnxruntime" if is_onnx else "torch"
    if backend not in ("torch", "onnxruntime"):
        raise ValueError(f"backend {backend!r} is not supported; use auto, torch or onnxruntime")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass runs/<name>/best.pt or an exported .onnx")
    if backend == "onnxruntime" and not is_onnx:
        raise ValueError(
            f"backend onnxruntime needs an .onnx file but got {path}; export it first with "
            f"`defectseg export --checkpoint {path}` and pass the .onnx"
        )
    if backend == "torch" and is_onnx:
        raise ValueError(
            f"backend torch needs a .pt checkpoint but got {path}; use --backend onnxruntime (or auto) for .onnx files"
        )
    if backend == "torch":
        _, model, (cfg, num_classes, names, task) = _read_pt(path)
        return torch_net(model, cfg, num_classes, names, task, device, dtype, channels_last, source=path)
    return _onnx_net(path, device, dtype, threads)


def _read_pt(path: Path) -> tuple[dict[str, Any], Any, tuple[C.RunConfig, int, list[str], str]]:
    """A .pt checkpoint, the model it names with its weights, and its (config, logits, class names, task)."""
    ckpt = load_checkpoint(path)
    fields = checkpoint_fields(ckpt, path)
    model, _ = model_from_checkpoint(ckpt, source=path)
    return ckpt, model, fields


def torch_net(
    model: Any,
    cfg: C.RunConfig,
    num_classes: int,
    class_names: list[str],
    task: str,
    device: str | torch.device = "auto",
    dtype: str | None = None,
    channels_last: bool = False,
    source: str | Path = "model",
) -> Net:
    """A `Net` around an in-memory `PixelModel` (raw pixels in, logits out): how training validates a model
    through the same path as predict. The model is put in eval mode on `device` (moved in place)."""
    dev = pick_device(device)
    if dtype not in (None, "fp32", "bf16", "fp16"):
        raise ValueError(f"dtype {dtype!r} is not supported; use bf16, fp16 or leave it unset (float32)")
    if dtype in ("bf16", "fp16") and dev.type != "cuda":
        raise ValueError(
            f"dtype {dtype} autocast is a CUDA option but the device is {dev}; drop --dtype or use --device cuda"
        )
    amp = parse_dtype(dtype)
    cl = channels_last and dev.type == "cuda"  # a CUDA memory-layout option; on the CPU it only costs copies
    model = model.eval().to(dev)
    if dev.type == "cpu":
        model = fuse_for_inference(model)  # BN folded, CheapNet rebuilt: eager CheapNet-M at 512² in half the time
    if cl:
        model = model.to(memory_format=torch.channels_last)

    def logits(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(dev, non_blocking=True)  # uint8 crosses the bus
        if cl:
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(dev, amp):
            out = model(t)
        return out.float().cpu().numpy()

    return Net(
        logits,
        cfg,
        num_classes,
        class_names,
        task,
        int(getattr(model, "size_multiple", 1)),
        cfg.data.channels,
        bool(cfg.data.reference),
        Path(source),
        "torch",
    )


def _onnx_providers(device: str) -> list[str]:
    import onnxruntime as ort  # optional at run time: without it the auto backend runs PyTorch (_exported_net)

    if device == "auto":
        return ["cuda", "cpu"]
    if device == "cpu":
        return ["cpu"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(
                f"device {device!r} asked for but this onnxruntime has no CUDA provider "
                f"(available: {ort.get_available_providers()}); use --device cpu or install "
                "onnxruntime-gpu"
            )
        return ["cuda"]
    raise ValueError(f"device {device!r} is not supported by the onnxruntime backend; use auto, cpu or cuda")


def _onnx_net(path: Path, device: str, dtype: str | None, threads: int | None) -> Net:
    if dtype not in (None, "fp32"):
        raise ValueError(
            f"dtype {dtype} is a torch-backend option; the ONNX graph runs in float32 "
            "(drop --dtype, or predict with the .pt checkpoint)"
        )
    try:
        om = OnnxModel(path, providers=_onnx_providers(device), threads=threads)
    except ValueError:
        raise
    except Exception as exc:  # anything ORT or protobuf throws for a broken file
        raise ValueError(
            f"cannot load ONNX model {path} ({type(exc).__name__}: {str(exc)[:200]}); re-export "
            "it with `defectseg export`"
        ) from exc
    raw = om.metadata.get(ONNX_CONFIG_KEY)
    if raw is None:
        raise ValueError(
            f"{path} has no '{ONNX_CONFIG_KEY}' metadata, so its preprocessing is unknown; export "
            "it with `defectseg export --checkpoint best.pt` (not a bare torch.onnx.export)"
        )
    try:
        meta = json.loads(raw)
        cfg, num_classes, names, task = checkpoint_fields(meta, path)
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: metadata '{ONNX_CONFIG_KEY}' is not a defectseg config ({exc}); re-export "
            "it with `defectseg export`"
        ) from exc
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(
            f"{path} was exported as {meta.get('format')!r}, whose graph expects normalised input; "
            f"this version reads {ONNX_FORMAT!r} (the graph normalises raw pixels itself): re-export "
            "it from its .pt with `defectseg export`"
        )
    image_channels, uses_ref = cfg.data.channels, bool(cfg.data.reference)
    in_channels = input_channels(cfg)
    if om.input_channels != in_channels:
        raise ValueError(
            f"{path}: the graph takes {om.input_channels} channels but its config implies "
            f"{in_channels}; re-export it with `defectseg export`"
        )
    outputs = om.session.get_outputs()[0].shape
    expected = num_classes + has_image_head(cfg.model.name, cfg.model.options)
    if len(outputs) == 4 and isinstance(outputs[1], int) and outputs[1] != expected:
        raise ValueError(
            f"{path}: the graph gives {outputs[1]} output channels but its config ({cfg.model.name}, classes "
            f"{names}) implies {expected}; re-export it from its checkpoint with `defectseg export`"
        )
    shape = om.input_shape
    fixed_batch = shape[0] if isinstance(shape[0], int) else None
    fixed_hw = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    multiple = int(om.metadata.get(SIZE_MULTIPLE_KEY, "1"))

    def run(x: np.ndarray) -> np.ndarray:
        xf = x.astype(np.float32)  # raw pixel values: the graph normalises them
        if fixed_batch is None or len(xf) == fixed_batch:
            return om(xf)
        outs = []
        for i in range(0, len(xf), fixed_batch):  # a --static graph: feed its fixed batch, zero-padded
            part = xf[i : i + fixed_batch]
            n = len(part)
            if n < fixed_batch:
                part = np.concatenate([part, np.zeros((fixed_batch - n, *part.shape[1:]), np.float32)])
            outs.append(om(part)[:n])
        return np.concatenate(outs)

    return Net(
        run,
        cfg,
        num_classes,
        names,
        task,
        multiple,
        image_channels,
        uses_ref,
        path,
        "onnxruntime",
        fixed_batch,
        fixed_hw,
    )


def _exported_net(path: Path, threads: int | None) -> Net:
    """backend "auto" for a .pt on the CPU: export its model after `fuse.fuse_for_inference` to a temporary ONNX
    file, check the logits against the checkpoint's PyTorch model on a random image, and run ONNX Runtime; falls back
    to PyTorch (with `note` saying why) when onnxruntime is missing, the export fails or the logits differ."""
    ckpt, model, (cfg, num_classes, names, task) = _read_pt(path)

    def on_torch(why: str) -> Net:  # built only when ONNX Runtime is not used
        net = torch_net(model, cfg, num_classes, names, task, "cpu", source=path)
        net.note = f"{why}; running PyTorch"
        return net

    try:
        import onnxruntime  # noqa: F401  (optional at run time: a minimal install may lack it)

        m = int(getattr(model, "size_multiple", 1))
        side = max(m, min(cfg.data.size, 256) // m * m)
        shape = (1, input_channels(cfg), side, side)
        with tempfile.TemporaryDirectory(prefix="defectseg-") as tmp:
            onnx_path = export_onnx(
                fuse_for_inference(model), Path(tmp) / "model.onnx", shape, metadata=onnx_metadata(ckpt)
            )
            net = _onnx_net(onnx_path, "cpu", None, threads)  # the session holds the graph in memory
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
