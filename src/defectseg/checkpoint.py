"""Checkpoints: written atomically, read safely, and turned back into the model they were trained with.

A checkpoint is a plain dict of tensors and Python values, read with `torch.load(weights_only=True)`. It carries
the resolved config, the number of logits, the class names, the task and the weights of the `PixelModel` (raw
pixels in, logits out: the normalisation is part of the weights), so evaluate, predict and export need nothing else.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from . import config as C
from .models import PixelModel, create_model, model_defaults

__all__ = [
    "CHECKPOINT_FORMAT",
    "READABLE_FORMATS",
    "build_model",
    "checkpoint_fields",
    "input_channels",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "save_checkpoint",
]

# v2 stores the PixelModel's weights (keys "net.*" plus the normalisation buffers); v1 stored the bare network's.
CHECKPOINT_FORMAT = "defectseg-checkpoint-v2"
READABLE_FORMATS = ("defectseg-checkpoint-v1", CHECKPOINT_FORMAT)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a temp file in the same folder, then rename (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: the previous checkpoint stays, no temp file is left
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a defectseg checkpoint safely (weights_only=True); a corrupt or foreign file is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; pass runs/<name>/best.pt or last.pt")
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) == 4 and head[0] == 0x08 and head[2] == 0x12:
        # an ONNX ModelProto: field 1 (ir_version, a small varint), then field 2 (producer_name)
        raise ValueError(
            f"{path} is an ONNX model, not a checkpoint; name it .onnx (predict, serve and watch take it so)"
        )
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save writes a zip (or, before 1.6, a pickle)
        raise ValueError(
            f"{path} is not a torch checkpoint (it starts {head!r}); use a best.pt/last.pt written by `defectseg train`"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: never retry with weights_only=False
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the refused object, e.g. posix.system
        raise ValueError(
            f"{path} is not a safe checkpoint: it holds Python objects other than tensors and plain "
            f"values{' (' + found.group(1) + ')' if found else ''}, which could run code when loaded, "
            "so it will not be loaded. Use a best.pt/last.pt written by `defectseg train`"
        ) from None
    except Exception as exc:
        raise ValueError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); "
            "the file is corrupt or not a torch checkpoint: use a best.pt/last.pt written by "
            "`defectseg train`"
        ) from exc
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt is None or not str(fmt).startswith("defectseg-checkpoint"):
        raise ValueError(
            f"{path} is not a defectseg checkpoint (no '{CHECKPOINT_FORMAT}' marker); "
            "to use bare weights, load them into a model with load_encoder_weights or "
            "model.load_state_dict"
        )
    if fmt not in READABLE_FORMATS:
        raise ValueError(
            f"{path} is a {fmt} checkpoint, written by a newer defectseg; this version reads "
            f"{', '.join(READABLE_FORMATS)}: upgrade defectseg"
        )
    return ckpt


def checkpoint_fields(d: dict[str, Any], source: str | Path) -> tuple[C.RunConfig, int, list[str], str]:
    """(config, number of logits, class names, task) of a checkpoint or of an exported model's metadata."""
    missing = [k for k in ("config", "num_classes") if k not in d]
    if missing:
        raise ValueError(
            f"{source} lacks {missing}; use a checkpoint written by `defectseg train` (or an ONNX "
            "file written by `defectseg export`)"
        )
    cfg = C.from_dict(d["config"])
    num_classes = int(d["num_classes"])
    names = list(
        d.get("class_names") or (["background", "defect"] if num_classes <= 2 else [str(i) for i in range(num_classes)])
    )
    return cfg, num_classes, names, str(d.get("task", cfg.train.task))


def input_channels(cfg: C.RunConfig) -> int:
    """Model input channels: the image's, doubled in reference mode (image + reference)."""
    return cfg.data.channels * (2 if cfg.data.reference else 1)


def build_model(cfg: C.RunConfig, num_classes: int, pretrained: bool = True) -> PixelModel:
    """The configured network wrapped with its normalisation: raw pixel values in, logits out. pretrained=False
    when the weights are about to come from a checkpoint: a pretrained encoder's file is then not read and folded
    only to be overwritten (a model's `pretrained` option, where it has one)."""
    options = dict(cfg.model.options)
    if not pretrained and "pretrained" in model_defaults(cfg.model.name):
        options["pretrained"] = False
    net = create_model(cfg.model.name, in_channels=input_channels(cfg), num_classes=num_classes, **options)
    # A pretrained encoder brings its own input normalisation (its weights', in its stem): data.mean/std are not its.
    mean, std = getattr(net, "input_norm", (cfg.data.mean, cfg.data.std))
    return PixelModel(net, mean, std)


def load_weights(model: PixelModel, state: dict[str, torch.Tensor]) -> None:
    """Load a PixelModel state dict, or a bare network's (format v1, or written by hand) with the model's
    own normalisation (from the config)."""
    if not any(k.startswith("net.") for k in state):
        state = {**{f"net.{k}": v for k, v in state.items()}, "scale": model.scale, "shift": model.shift}
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict[str, Any], source: str | Path = "checkpoint") -> tuple[PixelModel, C.RunConfig]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode, CPU)."""
    cfg = C.from_dict(ckpt["config"])
    model = build_model(cfg, ckpt["num_classes"], pretrained=False)
    try:
        load_weights(model, ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(
            f"{source}: the stored weights do not fit {cfg.model.name} with {input_channels(cfg)} "
            f"input channels and {ckpt['num_classes']} outputs ({str(exc)[:300]}); the checkpoint's "
            "config and weights disagree: re-train or re-save it"
        ) from exc
    return model.eval(), cfg
