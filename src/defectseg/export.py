"""ONNX export of any registered model and an ONNX Runtime wrapper for the Predictor's onnxruntime backend.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. Measured on torch 2.13 it exports every
registered model with dynamic batch/height/width, honours opset 17 and matches PyTorch to ~1e-7, about 10x faster
than the torch.export-based exporter (which needs opset >= 18 and fails its down-conversion to 17 for the
classifiers). torch deprecates it; `exporter="dynamo"` selects the torch.export-based path, tested as well, for the
day it goes away.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import config as C
from .checkpoint import input_channels, load_checkpoint, model_from_checkpoint
from .data.io import claim_file, write_atomic
from .fuse import fuse_for_inference
from .runtime import default_threads

if TYPE_CHECKING:
    import onnx

# onnx itself is imported where a graph is built or read: it takes half a second to import (ml_dtypes), which
# every command that loads the Predictor would otherwise pay.

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Written by export_onnx so an .onnx file alone tells the Predictor how to pad its input.
MODEL_KEY = "defectseg_model"
SIZE_MULTIPLE_KEY = "defectseg_size_multiple"
_REEXPORT = "re-export it from its checkpoint with `defectseg export`"

_EXPORTERS = ("torchscript", "dynamo")
_DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter has no implementations below 18
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, int, int, int] = (1, 1, 256, 256),
    dynamic: bool = True,
    metadata: dict[str, str] | None = None,
    opset: int = 17,
    *,
    exporter: str = "torchscript",
) -> Path:
    """Export `model` (in eval mode, float32, on the CPU) to an ONNX file and return its path.

    The graph has one input "image" (B, C, H, W) float32 and one output "logits": (B, num_classes, H, W) for
    segmenters, (B, num_classes) for classifiers. With `dynamic`, B, H and W are free (H and W must still be
    multiples of `model.size_multiple` at run time); without it the graph is fixed to `input_shape`.
    `metadata` (str -> str, e.g. {"defectseg_config": json.dumps(config)}) goes into the model's
    `metadata_props`, together with "defectseg_model" (registry name, when known) and "defectseg_size_multiple"
    unless `metadata` sets them. The file is written atomically (temp file in the same folder, then
    os.replace) after `onnx.checker.check_model` accepts it. `exporter="dynamo"` uses the torch.export-based
    exporter, which emits opset >= 18. The caller's model is not modified (a CPU copy is exported).
    """
    import onnx  # heavy: see the note at the imports

    path = Path(path)
    if exporter not in _EXPORTERS:
        raise ValueError(f"exporter must be one of {_EXPORTERS}, got {exporter!r}")
    if (
        len(input_shape) != 4
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in input_shape)
        or min(input_shape) < 1
    ):
        raise ValueError(f"input_shape must be four positive integers (B, C, H, W), got {input_shape!r}")
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper exports as the module it wraps
    name = getattr(model, "registry_name", type(model).__name__)
    multiple = int(getattr(model, "size_multiple", 1))
    _, _, h, w = input_shape
    if h % multiple or w % multiple:
        raise ValueError(
            f"input_shape {input_shape}: height and width must be multiples of {multiple} for "
            f"{name}; e.g. "
            f"{-(-h // multiple) * multiple}x{-(-w // multiple) * multiple}"
        )
    props = _metadata_props(model, multiple, metadata)
    if exporter == "dynamo" and opset < _DYNAMO_MIN_OPSET:
        opset = _DYNAMO_MIN_OPSET

    # A copy keeps the caller's device, dtype and train/eval mode untouched (and BN/dropout in eval here).
    model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    dummy = torch.zeros(input_shape, dtype=torch.float32)
    try:
        if exporter == "torchscript":
            proto = _export_torchscript(model, dummy, dynamic, opset)
        else:
            proto = _export_dynamo(model, dummy, dynamic, opset)
    except (ValueError, RuntimeError) as exc:  # e.g. a channel count the first conv rejects
        raise ValueError(f"cannot export {name} with input_shape {input_shape}: {exc}") from exc
    if len(proto.graph.output) != 1:
        raise ValueError(
            f"export needs a model that returns one logits tensor; {name} returns {len(proto.graph.output)} outputs"
        )
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    _write_atomic(proto.SerializeToString(), path)
    return path


def _metadata_props(model: nn.Module, multiple: int, metadata: dict[str, str] | None) -> dict[str, str]:
    props: dict[str, str] = {SIZE_MULTIPLE_KEY: str(multiple)}
    name = getattr(model, "registry_name", None)
    if name:
        props[MODEL_KEY] = str(name)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(
                f"ONNX metadata must map str to str; got {key!r}: {type(value).__name__}. "
                "Serialise structured values first, e.g. json.dumps(config)."
            )
        props[key] = value
    return props


def _export_torchscript(model: nn.Module, dummy: torch.Tensor, dynamic: bool, opset: int) -> onnx.ModelProto:
    import onnx  # heavy: see the note at the imports

    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.9+ warns on every call that this exporter is legacy; the choice is deliberate (module docstring).
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="The feature will be removed")
        # F.pad lowers to a Slice with step -1 that the exporter leaves to ONNX Runtime (which folds it at load)
        warnings.filterwarnings("ignore", category=UserWarning, message="Constant folding - Only steps=1")
        # Only the input's axes are declared: the exporter's shape inference makes the output's matching axes
        # symbolic, whatever its rank (segmenter or classifier), without running the model an extra time.
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes} if dynamic else None,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    if dynamic and len(proto.graph.output) == 1:
        # Give the inferred output symbols (e.g. "Convlogits_dim_2") the input's names: logits share B (and H, W
        # for segmenters, whose logits are at full resolution) with the image.
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_param") and (axis == 0 or (len(dims) == 4 and axis in (2, 3))):
                dim.dim_param = axes[axis]
    return proto


def _export_dynamo(model: nn.Module, dummy: torch.Tensor, dynamic: bool, opset: int) -> onnx.ModelProto:
    dynamic_shapes = None
    if dynamic:
        free = torch.export.Dim.DYNAMIC
        dynamic_shapes = ({0: free, 2: free, 3: free},)
    with warnings.catch_warnings():
        # torch 2.13's own pytree code trips its LeafSpec deprecation inside torch.export: not ours to fix.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*isinstance\\(treespec, LeafSpec\\)")
        program = torch.onnx.export(
            model,
            (dummy,),
            None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    assert program is not None, "torch.onnx.export(dynamo=True) with f=None returns an ONNXProgram"
    return program.model_proto


def _write_atomic(data: bytes, path: Path) -> None:
    """Write `data` to `path` atomically (`data.io.write_atomic`); an unwritable place is a ValueError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}; choose a writable --out") from None


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file as a dict, without building an inference session."""
    path = Path(path)
    return {p.key: p.value for p in _load_proto(path).metadata_props}


def _load_proto(path: Path) -> onnx.ModelProto:
    import onnx  # heavy: see the note at the imports

    if not path.is_file():
        raise ValueError(f"ONNX model {path} does not exist; export one with `defectseg export`")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError on truncated or foreign files
        raise ValueError(f"{path} is not a readable ONNX model ({exc}); {_REEXPORT}") from exc
    # An empty file parses as an empty ModelProto: no graph inputs means it is not a usable model.
    if not proto.graph.input or not proto.graph.output:
        raise ValueError(f"{path} holds no ONNX graph (empty or truncated file); {_REEXPORT}")
    return proto


def _resolve_providers(providers: list[str] | None) -> list[str]:
    import onnxruntime as ort  # optional at run time: export works without it (backends falls back to PyTorch)

    if providers is None:
        return ["CPUExecutionProvider"]
    known = set(ort.get_all_providers())
    available = set(ort.get_available_providers())
    resolved: list[str] = []
    for name in providers:
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in known:
            raise ValueError(
                f"unknown ONNX Runtime provider {name!r}; use e.g. 'CUDAExecutionProvider' or "
                f"'CPUExecutionProvider' (aliases: {', '.join(_PROVIDER_ALIASES)})"
            )
        # An unavailable provider (CUDA on a CPU-only install) is skipped; the CPU provider always remains.
        if full in available and full not in resolved:
            resolved.append(full)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return resolved


def _median_conv_width(path: Path) -> float:
    """Median output channels of the graph's Conv and ConvTranspose nodes (0 when it has none or is unreadable:
    the session then reports the problem)."""
    import onnx  # heavy: see the note at the imports

    try:
        proto = onnx.load(str(path))
    except Exception:
        return 0.0
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    widths = []
    for node in proto.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in shapes:
            dims = shapes[node.input[1]]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            widths.append(dims[0] if node.op_type == "Conv" else dims[1] * group)
    return float(np.median(widths)) if widths else 0.0


class OnnxModel:
    """An exported model run by ONNX Runtime: `model(x)` with x (B, C, H, W) float32 -> logits as np.ndarray.

    `providers` in order of preference (ORT names or 'cpu'/'cuda'); those this onnxruntime build lacks are
    skipped and the CPU provider is always the last resort. `threads` sets intra-op threads (default: the CPUs
    this process may use).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort  # optional at run time: export works without it (backends falls back to PyTorch)

        self.path = Path(path)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads}")
        if not self.path.is_file():
            raise ValueError(f"ONNX model {self.path} does not exist; export one with `defectseg export`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        # One graph, one input: parallelism comes from within ops, not between them.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT_ENABLE_ALL adds the blocked (NCHWc) layout, which pads channels to blocks of 8 or 16: a win for convs
        # of 8 channels and more (CheapNet-M, 512²: 48 ms against 56), a loss for narrower ones (CheapNet-S, G = 2:
        # 11.8 ms against 4.3). The graph's typical conv width decides.
        self.blocked_layout = _median_conv_width(self.path) >= 8
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.blocked_layout
            else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )
        chosen = _resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT's InvalidProtobuf (truncated, foreign), InvalidArgument (empty), Fail
            raise ValueError(f"ONNX Runtime cannot load {self.path}: {exc}; {_REEXPORT}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(
                f"{self.path} is not a defectseg model (expected one 4-D image input and one output, "
                f"got inputs {[(i.name, i.shape) for i in inputs]}); {_REEXPORT}"
            )
        self._input = inputs[0]
        self._output_name = outputs[0].name
        channels = self._input.shape[1]
        if not isinstance(channels, int):
            raise ValueError(f"{self.path} has a dynamic channel axis ({channels!r}); {_REEXPORT}")
        self.input_channels: int = channels
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, in priority order."""
        return list(self.session.get_providers())

    @property
    def input_shape(self) -> list[int | str | None]:
        """The graph's input shape: ints for fixed axes, names (or None) for dynamic ones."""
        return list(self._input.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch: x (B, C, H, W) float or uint8 -> (B, num_classes, H, W) or (B, num_classes) float32.

        A graph written by `export_checkpoint` takes raw pixel values (uint8 is cast to float32 here); a bare
        network exported with `export_onnx` takes whatever that network takes."""
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(
                f"{self.path.name} expects a 4-D numpy array (B, C, H, W); got {getattr(x, 'shape', type(x).__name__)}"
            )
        if not (np.issubdtype(x.dtype, np.floating) or x.dtype == np.uint8):
            raise ValueError(f"{self.path.name} expects float or uint8 input, got {x.dtype}")
        for axis, (want, got) in enumerate(zip(self._input.shape, x.shape)):
            if isinstance(want, int) and want != got:
                what = "channels" if axis == 1 else f"axis {axis}"
                fix = (
                    "give images with that many channels"
                    if axis == 1
                    else "re-export with dynamic axes (`defectseg export`, the default)"
                )
                raise ValueError(
                    f"{self.path.name} was exported for {what} = {want}, got {got} "
                    f"(input shape {tuple(x.shape)}); {fix}"
                )
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self._output_name], {self._input.name: x})[0]

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, providers={self.providers}, input={self.input_shape})"


# ----------------------------------------------------------------------------- checkpoints -> ONNX files
# The config travels in the graph's metadata, so an .onnx file alone is a complete model for the Predictor.
# v2: the graph takes raw pixel values (0..255) and normalises inside (v1 graphs expected normalised input).
ONNX_CONFIG_KEY = "defectseg_config"
ONNX_FORMAT = "defectseg-onnx-v2"
PARITY_TOLERANCE = 1e-4  # max |logit difference| between ONNX Runtime and PyTorch accepted by `export_checkpoint`


@dataclass
class ExportReport:
    path: Path
    input_shape: tuple[int, int, int, int]  # the parity-check input (B, C, H, W)
    max_abs_diff: float  # max |ONNX Runtime - PyTorch| over the logits
    max_abs_logit: float  # scale of the logits, to judge the difference
    dynamic: bool

    @property
    def ok(self) -> bool:
        """Agreement within PARITY_TOLERANCE (float32 rounding of the same graph)."""
        return self.max_abs_diff <= PARITY_TOLERANCE


def onnx_metadata(ckpt: dict[str, Any]) -> dict[str, str]:
    """What an exported model carries so the Predictor needs nothing else: the checkpoint's config,
    num_classes, class_names and task as JSON under ONNX_CONFIG_KEY."""
    payload = {
        "format": ONNX_FORMAT,
        "config": ckpt["config"],
        "num_classes": int(ckpt["num_classes"]),
        "class_names": list(ckpt.get("class_names") or []),
        "task": ckpt.get("task", "segment"),
    }
    return {ONNX_CONFIG_KEY: json.dumps(payload)}


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    dynamic: bool = True,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> ExportReport:
    """Export a .pt checkpoint to a self-contained ONNX file and check parity with PyTorch.

    The graph is the checkpoint's `PixelModel`: input "image" (B, C, H, W) float32 raw pixel values 0..255
    (`OnnxModel` also takes uint8 and casts), output "logits"; the normalisation is inside. The config goes
    into the metadata. out: default the checkpoint path with suffix .onnx; an existing file needs `overwrite`, and
    a checkpoint is never replaced. size: the traced (static: fixed)
    square input side, a multiple of the model's size multiple; default the training (H, W), `config.resize_hw`.
    With dynamic=False the graph takes exactly (1, C, H, W) and the Predictor resizes images to that size.
    The graph is `fuse.fuse_for_inference(model)`, the same function in the form fast kernels serve.
    Parity: logits of the checkpoint's PyTorch model (CPU, float32) and ONNX Runtime (CPU) on a random uint8 input.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        raise ValueError(f"{checkpoint} is already an ONNX model; export takes a .pt checkpoint")
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, source=checkpoint)
    hw = (size, size) if size else C.resize_hw(cfg.data)
    m = model.size_multiple
    for side in hw:
        if side < 1 or side % m:
            raise ValueError(
                f"--size {side} must be a positive multiple of {m} for {cfg.model.name}; e.g. "
                f"{max(m, -(-side // m) * m)}"
            )
    out = Path(out) if out else checkpoint.with_suffix(".onnx")
    claim_file(out, "--out", overwrite, inputs=[checkpoint])  # never over the checkpoint, nor silently
    channels = input_channels(cfg)
    # The graph is the rewritten model (BatchNorm folded, CheapNet's head rebuilt: 1.9x faster in ONNX Runtime
    # at 512²); parity below is checked against the checkpoint's own model.
    export_onnx(fuse_for_inference(model), out, (1, channels, *hw), dynamic=dynamic, metadata=onnx_metadata(ckpt))
    shape = (2 if dynamic else 1, channels, *hw)
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = OnnxModel(out, providers=["cpu"])(x)
    return ExportReport(out, shape, float(np.abs(got - ref).max()), float(np.abs(ref).max()), dynamic)


__all__ = [
    "export_onnx",
    "export_checkpoint",
    "ExportReport",
    "onnx_metadata",
    "OnnxModel",
    "read_onnx_metadata",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ONNX_CONFIG_KEY",
    "ONNX_FORMAT",
]
